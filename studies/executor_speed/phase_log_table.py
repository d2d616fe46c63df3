"""Phase medians from the log of `studies/fidelity_1gpu/measure.py` (or `executor/profile.py` progress lines) when
the call ended before the bundle was written, as a Markdown table with each stage step's fraction of the copy
bandwidth. Only what the log printed is used: medians, no p10/p90.

    python studies/executor_speed/phase_log_table.py LOG [LOG ...] --model qwen3-4b --copy-gbps 3006 --out table.md
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from spdsim.scenario.memory import decode_step_weight_bytes, layer_weight_bytes  # noqa: E402
from spdsim.scenario.presets import get_model  # noqa: E402

LAYERS = re.compile(r"layers=(\d+) q=(\d+) kv=(\d+): ([\d.]+) us")
AR = re.compile(r"ar_step kv=(\d+): ([\d.]+) us")
HEAD = re.compile(r"head/embed/p2p q=(\d+): ([\d.]+) us")
HOST = re.compile(r"host_issue \(graphs: us\): (.*)$")
DRAFTER = re.compile(r"drafter L_s=(\d+) n=(\d+) kv=(\d+): ([\d.]+) us")


def parse(paths: list[Path]) -> dict[str, dict]:
    """The last value printed for each phase point over the logs, in order (a later call overrides)."""
    phases: dict[str, dict] = {"layers": {}, "ar_step": {}, "head": {}, "host_issue": {}, "drafter": {}}
    for path in paths:
        for line in path.read_text().splitlines():
            if m := LAYERS.search(line):
                phases["layers"][tuple(map(int, m.groups()[:3]))] = float(m[4])
            elif m := AR.search(line):
                phases["ar_step"][int(m[1])] = float(m[2])
            elif m := HEAD.search(line):
                phases["head"][int(m[1])] = float(m[2])
            elif m := HOST.search(line):
                for item in m[1].split(","):
                    graphs, _, value = item.strip().partition(":")
                    phases["host_issue"][int(graphs)] = float(value)
            elif m := DRAFTER.search(line):
                phases["drafter"][tuple(map(int, m.groups()[:3]))] = float(m[4])
    return phases


def table(phases: dict[str, dict], model: str, copy_gbps: float, provenance: str = "") -> str:
    shape = get_model(model)
    layer_bytes = layer_weight_bytes(shape, 1)  # the mean layer (exact for whole 4-layer Qwen3.5 groups)
    lines = [provenance, ""] if provenance else []
    lines += [
        f"## {model}: phase medians (us) from the measure log; stage fraction = weight bytes / time / {copy_gbps:.0f} GB/s",
        "",
        "| layers | query tokens | kv_len | median (us) | fraction of copy BW |",
        "|---|---|---|---|---|",
    ]
    for (layers, q, kv), us in sorted(
        phases["layers"].items(), key=lambda item: (item[0][1], item[0][2], -item[0][0])
    ):
        fraction = layers * layer_bytes / (us * 1e-6) / 1e9 / copy_gbps
        lines.append(f"| {layers} | {q} | {kv} | {us:.1f} | {fraction:.1%} |")
    lines += ["", "| phase | coordinate | median (us) |", "|---|---|---|"]
    step_bytes = decode_step_weight_bytes(shape)
    lines += [
        f"| ar_step (weights + lm_head: {step_bytes / (us * 1e3) / copy_gbps:.1%} of copy BW) | kv_len {kv} | {us:.1f} |"
        for kv, us in sorted(phases["ar_step"].items())
    ]
    lines += [
        f"| head (norm + lm_head + verify) | query tokens {q} | {us:.1f} |"
        for q, us in sorted(phases["head"].items())
    ]
    lines += [f"| host_issue | {g} graphs | {us:.1f} |" for g, us in sorted(phases["host_issue"].items())]
    lines += [
        f"| drafter | L_s {ls}, n {n}, kv_len {kv} | {us:.1f} |"
        for (ls, n, kv), us in sorted(phases["drafter"].items())
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument(
        "--copy-gbps", type=float, required=True, help="measured copy bandwidth of the same GPU kind"
    )
    parser.add_argument("--gpu-info", type=Path, help="nvidia-smi CSV of the machine the logs come from")
    parser.add_argument("--software", default="", help="torch / CUDA versions of that machine")
    parser.add_argument("--date", default="", help="date of the measurement (the logs hold times only)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    provenance = []
    if args.gpu_info:
        header, values = args.gpu_info.read_text().strip().splitlines()[:2]
        provenance.append(
            "GPU: "
            + "; ".join(
                f"{h.strip()} {v.strip()}" for h, v in zip(header.split(","), values.split(","), strict=False)
            )
        )
    if args.software:
        provenance.append(f"Software: {args.software}")
    if args.date:
        provenance.append(f"Date: {args.date}")
    provenance.append("Logs: " + ", ".join(path.name for path in args.logs))
    text = table(parse(args.logs), args.model, args.copy_gbps, "  \n".join(provenance))
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
