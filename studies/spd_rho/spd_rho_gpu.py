"""SPD tokens per cycle on one GPU under synthetic acceptance, against the closed form (issue 3 acceptance).

For each n ∈ {2, 4, 8} and α ∈ {0.6, 0.8, 0.95} the single-process SPD schedule decodes MT-bench prompts
(byte-tokenised: random weights have no tokenizer) with ``random:qwen3-4b`` in bf16; the drafter's token is
replaced by the target's own greedy token with probability α (seeded), and the target verifies every draft for
real. Measured ρ = decode tokens / cycles is compared with ρ = 1 / (1 + (n−1)(1−α)) at the nominal α and at the
realised acceptance fraction; the standard error of ρ from the number of verifications is reported beside it.

Usage (GPU): ``python3 studies/spd_rho/spd_rho_gpu.py --out DIR [--new-tokens 256] [--prompts 8]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import time
from pathlib import Path

import torch

STAGES = (2, 4, 8)  # 36 layers: n = 8 uses an uneven split
ALPHAS = (0.6, 0.8, 0.95)


def closed_form_rho(n: int, alpha: float) -> float:
    return 1.0 / (1.0 + (n - 1) * (1.0 - alpha))


def rho_standard_error(n: int, alpha: float, verifications: int) -> float:
    """Delta-method s.e. of ρ = V / (V + (n−1)R) with R ~ Binomial(V, 1−α)."""
    if verifications == 0:
        return float("nan")
    rejects = verifications * (1 - alpha)
    steps = verifications + (n - 1) * rejects
    sd_rejects = math.sqrt(verifications * alpha * (1 - alpha))
    return (verifications * (n - 1) * sd_rejects / steps**2) if steps else float("nan")


def even_or_uneven_split(num_layers: int, n: int) -> list[int]:
    """n stages whose layer counts differ by at most one (36 layers at n = 8: 5,5,5,5,4,4,4,4)."""
    base, extra = divmod(num_layers, n)
    return [base + (1 if s < extra else 0) for s in range(n)]


def prompt_set(count: int, new_tokens: int, max_seq_len: int):
    from executor.models import ByteTokenizer
    from executor.prompts import load_prompts
    from executor.schedules.common import Prompt

    longest = max_seq_len - new_tokens - 16
    rows = [p for p in load_prompts("mt_bench", ByteTokenizer()) if 64 <= len(p.token_ids) <= longest]
    return [Prompt(p.prompt_id, p.token_ids) for p in rows[:count]]


def measure(model, prompts, n: int, alpha: float, new_tokens: int, seconds: float) -> dict:
    """Decode prompt after prompt until the time budget is spent; ρ over all of them, and in steady state."""
    from executor.schedules import run_method

    started = time.perf_counter()
    tokens = cycles = verifications = accepted = used = 0
    decode_seconds = 0.0
    for index, prompt in enumerate(prompts):
        result = run_method(
            "spd",
            model,
            [prompt],
            stage_layers=even_or_uneven_split(model.num_layers, n),
            spec_layers=1,
            synthetic_alpha=alpha,
            max_new_tokens=new_tokens,
            seed=1000 * n + int(alpha * 100) + 7 * index,
        )
        tokens += result.decode_tokens
        cycles += sum(p.decode_steps for p in result.prompts)
        verifications += sum(p.verifications for p in result.prompts)
        accepted += sum(p.accepted for p in result.prompts)
        decode_seconds += result.decode_seconds
        used += 1
        if time.perf_counter() - started > seconds:
            break
    realised = accepted / verifications
    nominal = closed_form_rho(n, alpha)
    rho = tokens / cycles
    # Each prompt starts with n-1 fill cycles (docs/spd.md §1.3 step 6); the closed form is the steady state.
    rho_steady = tokens / (cycles - used * (n - 1))
    return {
        "stages": n,
        "alpha": alpha,
        "prompts": used,
        "decode_tokens": tokens,
        "cycles": cycles,
        "verifications": verifications,
        "realised_alpha": realised,
        "rho_measured": rho,
        "rho_steady": rho_steady,
        "rho_closed_form": nominal,
        "rel_error_pct": 100 * (rho - nominal) / nominal,
        "steady_rel_error_pct": 100 * (rho_steady - nominal) / nominal,
        "steady_rel_error_at_realised_pct": 100
        * (rho_steady - closed_form_rho(n, realised))
        / closed_form_rho(n, realised),
        "rho_standard_error_pct": 100 * rho_standard_error(n, alpha, verifications) / nominal,
        "tokens_per_s": tokens / decode_seconds if decode_seconds else float("nan"),
        "wall_s": time.perf_counter() - started,
    }


def write_report(rows: list[dict], stamp: dict, out: Path) -> None:
    """spd_rho.json and spd_rho.md in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "spd_rho.json").write_text(json.dumps({"meta": stamp, "rows": rows}, indent=1))
    lines = [
        "# SPD tokens per cycle ρ under synthetic acceptance vs the closed form",
        "",
        "".join(f"- {k}: {v}\n" for k, v in stamp.items()),
        "ρ steady excludes the n−1 fill cycles at the start of each prompt (the closed form is the steady state);",
        "s.e. is the standard error of ρ implied by the number of verifications at the nominal α.",
        "",
        "| n | α | prompts | cycles | verifications | realised α | ρ measured | ρ steady | ρ closed form "
        "| steady error % | s.e. % | steady error at realised α % | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['stages']} | {r['alpha']} | {r['prompts']} | {r['cycles']} | {r['verifications']} "
            f"| {r['realised_alpha']:.4f} | {r['rho_measured']:.4f} | {r['rho_steady']:.4f} "
            f"| {r['rho_closed_form']:.4f} | {r['steady_rel_error_pct']:+.2f} | {r['rho_standard_error_pct']:.2f} "
            f"| {r['steady_rel_error_at_realised_pct']:+.2f} | {r['tokens_per_s']:.1f} |"
        )
    (out / "spd_rho.md").write_text("\n".join(lines) + "\n")


def merge(parts: list[Path], out: Path) -> None:
    """One report from the per-n outputs of parallel processes (same model, device and settings)."""
    loaded = [json.loads((part / "spd_rho.json").read_text()) for part in parts]
    rows = sorted((row for doc in loaded for row in doc["rows"]), key=lambda r: (r["stages"], r["alpha"]))
    stamp = {**loaded[0]["meta"], "parallel_processes": len(parts)}
    write_report(rows, stamp, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="random:qwen3-4b")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--stages", type=int, nargs="*", default=list(STAGES))
    parser.add_argument("--seconds-per-config", type=float, default=20.0)
    parser.add_argument(
        "--merge", type=Path, nargs="*", help="merge these output folders into --out and exit"
    )
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, args.out)
        return

    import transformers

    from executor.models import load_fast_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "bfloat16" if device == "cuda" else "float32"
    max_seq_len = 1024
    model, _ = load_fast_model(args.model, device=device, dtype=dtype, seed=0, max_seq_len=max_seq_len)
    prompts = prompt_set(args.prompts, args.new_tokens, max_seq_len)
    rows = []
    for n in args.stages:
        for alpha in ALPHAS:
            rows.append(measure(model, prompts, n, alpha, args.new_tokens, args.seconds_per_config))
            row = rows[-1]
            print(
                json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
                flush=True,
            )
    stamp = {
        "model": args.model,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "new_tokens": args.new_tokens,
        "spec_layers": 1,
        "script": "studies/spd_rho/spd_rho_gpu.py",
    }
    write_report(rows, stamp, args.out)


if __name__ == "__main__":
    main()
