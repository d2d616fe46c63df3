"""Measurements for the one-GPU fidelity study (runs on the GPU machine; `run_gpu.sh` gives the exact call).

Per model, in one process (one load, one compile): a profile bundle of every phase, graph-captured; AR; EAGLE-3
chain runs for K in {2, 3, 5, 7} x synthetic alpha in {0.6, 0.8, 0.9} (random head weights, T = 0); single-process
SPD at n in {2, 4}. Every run is a run directory (config.json, tokens.csv, summary.json, trace.csv, cycles.csv;
timeline.json since it was added) under ``OUT/<model tag>/``; `analyze.py` calibrates on AR + one chain run and validates the rest (held out).

    python studies/fidelity_1gpu/measure.py --models random:qwen3-4b,random:qwen3-8b --out $OUT
"""

from __future__ import annotations

import argparse
import datetime
import faulthandler
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from executor.fastmodel import LAYER_VARIANTS  # noqa: E402
from executor.host_sync import stall_watchdog  # noqa: E402
from executor.models import compile_layer_variant, load_fast_model  # noqa: E402
from executor.profile import (  # noqa: E402
    ProfileGrid,
    build_bundle,
    hardware_info,
    measure_copy_bandwidth_gbps,
    profile_missing_phases,
    profile_phases,
    software_info,
    write_bundle,
)
from executor.prompts import load_prompts  # noqa: E402
from executor.rundir import write_run_dir  # noqa: E402
from executor.schedules import run_method  # noqa: E402
from spdsim.contract import SpdsimError  # noqa: E402
from spdsim.contract.profile_schema import load_profile  # noqa: E402

CHAIN_K = (2, 3, 5, 7)
CHAIN_ALPHA = (0.6, 0.8, 0.9)
SPD_STAGES = (2, 4)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@contextmanager
def stack_dumps(every_s: float, file=None):
    """Print every thread's Python stack each ``every_s`` seconds while the block runs (0: never): a run cut
    short by the call's time limit then shows where its time went (the Qwen3.5 SPD runs never finished and
    left no clue, studies/qwen35_h200/README.md)."""
    if every_s <= 0:
        yield
        return
    faulthandler.dump_traceback_later(every_s, repeat=True, file=file or sys.stderr)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def run_name(method: str, width: int | None = None, alpha: float | None = None) -> str:
    """Run-directory names shared with analyze.py."""
    if method == "ar":
        return "ar"
    letter = "k" if method == "eagle3" else "n"
    return f"{method}_{letter}{width}_a{alpha:.2f}"


def measure_model(spec: str, out: Path, args, device: str) -> None:
    tag = spec.replace("random:", "").replace(":", "-")
    folder = out / tag
    folder.mkdir(parents=True, exist_ok=True)
    dtype = "bfloat16" if device == "cuda" else "float32"
    model, loaded = load_fast_model(spec, device=device, dtype=dtype, seed=0, max_seq_len=4096)
    if device == "cuda":
        try:
            compile_layer_variant(model, args.layers)
        except SpdsimError as exc:
            raise SystemExit(f"error: {spec}: {exc}") from None
    prompts = [
        (p.prompt_id, p.token_ids) for p in load_prompts(args.prompts, loaded.tokenizer, limit=args.limit)
    ]
    common = {"max_new_tokens": args.new_tokens, "seed": 0}
    gpu = hardware_info(device, 0.0)["gpu"]
    extra = {"model": spec, "prompts": args.prompts, "dtype": dtype, "gpu": gpu, "layers": args.layers}

    def save(name: str, result) -> None:
        write_run_dir(result, folder / name, extra)
        summary = result.summary()
        log(
            f"{tag} {name}: {summary['tokens_per_s']:.1f} tok/s, tpot {summary['tpot_ms']:.3f} ms, "
            f"realised alpha {summary['realised_alpha']} (nominal {summary['nominal_alpha']})"
        )

    resume = args.resume and _same_gpu(folder, gpu, args.layers)

    def attempt(name: str, method: str, **opts) -> None:
        if resume and measured_on(folder / name) == gpu and ran_with(folder / name, opts):
            log(f"{tag} {name}: kept (--resume)")
            return
        log(f"{tag} {name}: started")  # with the line at its end: where a call's time went

        def stalled(
            waited_s: float,
        ) -> None:  # a blocked device read cannot be interrupted: end, let the next go
            log(f"{tag} {name}: STALLED, one device read waited {waited_s:.0f} s (--stall-s); every stack:")
            faulthandler.dump_traceback(file=sys.stdout, all_threads=True)
            sys.stdout.flush()
            os._exit(3)

        try:
            with stack_dumps(args.stack_dump_s), stall_watchdog(args.stall_s, stalled):
                result = run_method(method, model, prompts, **common, **opts)
            save(name, result)
        except Exception as exc:  # noqa: BLE001 - a measurement campaign logs a failed run and goes on
            log(f"{tag} {name}: FAILED {exc!r}"[:400])

    if resume and (folder / "profile.json").is_file():
        log(f"{tag}: profile bundle kept (--resume)")
        add_missing_phases(model, folder, args, device)
    else:
        measure_bundle(spec, model, folder, args, device)
    # The bundle and the two fitted runs first: a campaign cut short by its time limit can still be calibrated.
    fitted = [(3, 0.8)] if 3 in args.chain_k else []
    attempt("ar", "ar")
    for k, alpha in fitted:
        attempt(run_name("eagle3", k, alpha), "eagle3", k=k, synthetic_alpha=alpha)
    drafter_depth = spd_spec_layers(campaign_grid(args, device))
    for n in args.spd_stages:
        attempt(run_name("spd", n, 0.8), "spd", stages=n, synthetic_alpha=0.8, spec_layers=drafter_depth)
    for k, alpha in held_out_order(args.chain_k, CHAIN_ALPHA, fitted):
        attempt(run_name("eagle3", k, alpha), "eagle3", k=k, synthetic_alpha=alpha)
    model = loaded = None  # free the GPU before the next model
    if device == "cuda":
        torch.cuda.empty_cache()
        torch._dynamo.reset()


def spd_spec_layers(grid: ProfileGrid) -> int:
    """The SPD runs' drafter depth L_s: the bundle's shallowest profiled one, so every run can be priced from the
    bundle (the simulator does not extrapolate L_s). Session 12's Qwen3.5 runs took the executor's default 1
    beside a bundle of L_s ∈ {2, 3, 4} and could not be priced (studies/qwen35_h200/README.md)."""
    return min(grid.spec_layers, default=1)


def ran_with(run: Path, opts: dict) -> bool:
    """Whether a finished run's config holds every option this campaign asks of it (--resume keeps it only
    then: a run of other options, e.g. another drafter depth, is measured again)."""
    config = json.loads((run / "config.json").read_text())
    return all(config.get(key) == value for key, value in opts.items())


def held_out_order(
    widths: tuple[int, ...], alphas: tuple[float, ...], fitted: list[tuple[int, float]]
) -> list[tuple[int, float]]:
    """Every (K, alpha) pair not fitted, ordered so that any prefix spreads over K and alpha: round r gives K number
    i the alpha number (r + i) mod len(alphas). A campaign cut short still holds out varied configurations."""
    order = [(k, alphas[(r + i) % len(alphas)]) for r in range(len(alphas)) for i, k in enumerate(widths)]
    return [pair for pair in order if pair not in fitted]


def measured_on(run: Path) -> str | None:
    """The GPU a finished run was measured on (its config's "gpu"); None for an unfinished or unlabelled run.
    --resume keeps a run only on the same GPU: a bundle re-measured on another GPU and cut short must not leave
    the old GPU's runs to be kept beside it (session 7: H100 SPD runs beside an H200 bundle)."""
    if not (run / "summary.json").is_file() or not (run / "config.json").is_file():
        return None
    return json.loads((run / "config.json").read_text()).get("gpu")


def _same_gpu(folder: Path, gpu: str, layers: str = "compiled") -> bool:
    """--resume keeps a folder's bundle (and its runs of this GPU) only if the bundle was measured on this GPU, with
    the same --layers (campaigns before it had no such field: compiled)."""
    meta = folder / "measure.json"
    if not meta.is_file():
        return False
    recorded = json.loads(meta.read_text())
    bundle_gpu, bundle_layers = recorded["hardware"].get("gpu"), recorded.get("layers", "compiled")
    if (bundle_gpu, bundle_layers) != (gpu, layers):
        log(
            f"{folder.name}: measured on {bundle_gpu} ({bundle_layers}), this is {gpu} ({layers}): measuring again"
        )
        return False
    return True


def campaign_grid(args, device: str) -> ProfileGrid:
    """The bundle's coordinates: every shape the campaign's runs take (a small grid on the CPU)."""
    if device != "cuda":
        return ProfileGrid(
            stage_counts=(1, 2), query_tokens=(1, 3, 4), kv_lens=args.kv_lens, spec_layers=(1,), iters=3
        )
    return ProfileGrid(
        stage_counts=(1, 2, 4, 8),
        query_tokens=(1, 3, 4, 6, 8),
        kv_lens=args.kv_lens,
        spec_layers=args.spec_layers,
        chain_draft=bool(args.chain_k),
        iters=args.iters,
    )


def add_missing_phases(model, folder: Path, args, device: str) -> None:
    """A kept bundle gains the phases it predates (``ADDABLE_PHASES``, e.g. ``stream_overlap``), measured on the
    same GPU kind; its other phases and the finished runs stay. measure.json records what was added, and when."""
    bundle = json.loads((folder / "profile.json").read_text())
    added = profile_missing_phases(model, campaign_grid(args, device), bundle["phases"], progress=log)
    if not added:
        return
    bundle["phases"].update(added)
    write_bundle(folder / "profile.json", bundle)
    load_profile(folder / "profile.json")  # the merged bundle is still a valid one
    meta_path = folder / "measure.json"
    meta = json.loads(meta_path.read_text())
    meta.setdefault("added_phases", []).append(
        {"phases": sorted(added), "date": _now(), "software": software_info(), "command": _command()}
    )
    meta_path.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    log(f"{folder.name}: added {', '.join(sorted(added))} to the kept bundle")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


def _command() -> str:
    """This call's command line, paths inside the repository relative to it (no machine paths in results)."""
    return " ".join(["python"] + sys.argv).replace(f"{ROOT}/", "")


def measure_bundle(spec: str, model, folder: Path, args, device: str) -> None:
    """The profile bundle (every phase, graph-captured) and the campaign's provenance (measure.json)."""
    tag = folder.name
    log(f"{tag}: profile bundle")
    grid = campaign_grid(args, device)
    copy_gbps = measure_copy_bandwidth_gbps(device, nbytes=(1 << 30) if device == "cuda" else 1 << 24)
    hardware = hardware_info(device, copy_gbps)
    phases = profile_phases(model, grid, progress=log)
    bundle = build_bundle(
        model_name=spec, model=model, phases=phases, hardware=hardware, source=f"studies/fidelity_1gpu {spec}"
    )
    write_bundle(folder / "profile.json", bundle)
    meta = {
        "model": spec,
        "layers": args.layers,
        "hardware": hardware,
        "software": software_info(),
        "date": _now(),
        "command": _command(),
    }
    (folder / "measure.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="random:qwen3-4b,random:qwen3-8b")
    parser.add_argument("--out", default=str(ROOT / "studies" / "fidelity_1gpu" / "results"))
    parser.add_argument("--prompts", default="mt_bench")
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--chain-k", default=",".join(map(str, CHAIN_K)), help="EAGLE-3 K values; '' skips")
    parser.add_argument(
        "--kv-lens",
        default="128,256,512",
        help="live KV lengths of the profile bundle: from below the shortest prompt to above the longest prompt plus "
        "new tokens (a reader does not extrapolate); lengths under 256 share the 256-slot window's graphs",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep a model folder's bundle and finished runs (same GPU kind), measure only what is missing",
    )
    parser.add_argument(
        "--layers",
        choices=sorted(LAYER_VARIANTS),
        default="compiled",
        help="the layers on a GPU: compiled (inductor); fused: executor.fused_decode's one-token layer, compiled; "
        "fused+pdl: that layer uncompiled, as programmatic dependent launches (FastModel.compile_layers)",
    )
    parser.add_argument("--spd-stages", default=",".join(map(str, SPD_STAGES)), help="SPD runs' n; '' skips")
    parser.add_argument(
        "--spec-layers",
        default="1",
        help="SPD drafter depths L_s of the profile bundle; '' skips the drafter phase",
    )
    parser.add_argument(
        "--stack-dump-s",
        type=float,
        default=120.0,
        help="print the Python stacks every this many seconds while a run is in flight (0: never)",
    )
    parser.add_argument(
        "--stall-s",
        type=float,
        default=120.0,
        help="end the campaign (exit 3, stacks printed) when one device read waits longer (0: never)",
    )
    args = parser.parse_args()
    args.chain_k = tuple(int(k) for k in args.chain_k.split(",") if k)
    args.kv_lens = tuple(int(k) for k in args.kv_lens.split(","))
    args.spd_stages = tuple(int(n) for n in args.spd_stages.split(",") if n)
    args.spec_layers = tuple(int(k) for k in args.spec_layers.split(",") if k)
    for spec in args.models.split(","):
        measure_model(spec, Path(args.out), args, args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
