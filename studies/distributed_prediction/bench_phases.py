"""Phase profile of the distributed SPD cycle (issue 15): per-phase medians of the saturated cycles, controller
host syncs per cycle, and the measured cycle next to the prediction of ``predict.py``.

GPU (2×H200, NCCL): ``python studies/distributed_prediction/bench_phases.py --model random:qwen3-8b --stages 2``.
CPU smoke run (gloo, tiny model): ``python studies/distributed_prediction/bench_phases.py --tiny``.
Writes ``results/phases_<model>_n<n>_<drafter>_a<α>.json``. Not run on a GPU yet (no device time this session).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

OUT = Path(__file__).resolve().parent / "results"


def source_for(args):
    from executor.distributed import ModelSource

    if args.tiny:
        sys.path.insert(0, str(ROOT / "tests"))
        from distributed_tiny import tiny_source

        return tiny_source(layers=4)
    return ModelSource(args.model, dtype="bfloat16", max_seq_len=args.prompt_len + args.new_tokens + 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:qwen3-8b")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run on the tests' tiny model")
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--drafter", choices=("colocated", "own"), default="colocated")
    parser.add_argument("--alpha", type=float, default=0.8)
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()

    import numpy as np

    from executor.distributed import DistributedConfig, run_distributed
    from executor.schedules.common import DecodeOptions

    source = source_for(args)
    vocab = 96 if args.tiny else 32000
    rng = np.random.default_rng(0)
    length = 8 if args.tiny else args.prompt_len
    prompts = [(f"p{i}", rng.integers(0, vocab, length).tolist()) for i in range(args.prompts)]
    new_tokens = 16 if args.tiny else args.new_tokens
    config = DistributedConfig(num_stages=args.stages, colocated=args.drafter == "colocated", with_ar=True)
    job = DecodeOptions(max_new_tokens=new_tokens, synthetic_alpha=args.alpha)
    run = run_distributed(source, prompts, config, [job])
    timed = run.spd[0].prompts  # the run warms up untimed first on CUDA (compilation, graph capture)
    saturated = [c.phases_us for p in timed for c in p.cycles if c.state == "saturated"]
    names = sorted({name for phases in saturated for name in phases})
    medians = {name: statistics.median(p[name] for p in saturated if name in p) for name in names}
    ar_steps = [t for p in run.ar.prompts for t in np.diff(p.token_times_us)] if run.ar else []
    syncs = [k for cycles in run.cycle_syncs for state, k in cycles if state == "saturated"]
    report = {
        "model": "tiny" if args.tiny else args.model,
        "stages": args.stages,
        "drafter": args.drafter,
        "alpha": args.alpha,
        "backend": run.backend,
        "world_size": run.world_size,
        "saturated_phase_medians_us": medians,
        "saturated_cycles": len(saturated),
        "controller_syncs_per_saturated_cycle": statistics.mean(syncs) if syncs else None,
        "ar_step_median_us": float(np.median(ar_steps)) if len(ar_steps) else None,
        "tokens_per_cycle": [p.verifications / max(1, p.decode_steps) for p in timed],
    }
    OUT.mkdir(parents=True, exist_ok=True)
    name = f"phases_{report['model'].replace(':', '-')}_n{args.stages}_{args.drafter}_a{args.alpha}.json"
    (OUT / name).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
