"""Behaviour snapshot: the outputs a structural change must leave byte-identical.

Writes, under OUT (a new directory):

- ``simulate/``: the default ``spdsim simulate`` run directory;
- ``sweep.csv``: a 50-point sweep (5 pipeline depths x 10 acceptance rates) of the default scenario;
- ``validate.csv`` and ``validate.txt``: ``spdsim validate`` of committed executor measurements against the
  committed calibrated profile;
- ``optimize.csv`` and ``optimize.txt``: the ``spdsim optimize`` finalists of the default scenario.

Command (run it before and after a change, then ``diff -r BEFORE AFTER``)::

    python studies/behaviour_snapshot/snapshot.py /tmp/snap_before
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The committed executor measurements and their calibrated profile (the fidelity study's 2-GPU runs).
# (studies/results/fidelity before issue 13 moved the studies into folders)
MEASURED = [ROOT / p for p in ("studies/fidelity/results", "studies/results/fidelity")]


def spdsim(*args: str, stdout: Path | None = None) -> None:
    """Run the ``spdsim`` console entry point of this checkout (not the installed one) with ``args``."""
    command = [sys.executable, "-c", "import sys; from spdsim.cli import main; main(sys.argv[1:])", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "MPLBACKEND": "Agg"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"spdsim {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    if stdout is not None:
        stdout.write_text(done.stdout)


def main(out: Path) -> None:
    if out.exists():
        raise SystemExit(f"{out}: exists; give a new directory")
    out.mkdir(parents=True)
    data = next(p for p in MEASURED if p.is_dir())
    default = ROOT / "spdsim" / "scenarios" / "default.toml"
    spdsim("simulate", "--out", str(out / "simulate"))
    spdsim(
        "sweep",
        str(default),
        "--grid",
        "method.num_stages=2,4,8,16,32",
        "--grid",
        "acceptance.alpha=0.5:0.95:10",
        "--workers",
        "1",
        "--out",
        str(out / "sweep.csv"),
    )
    runs = [str(data / name) for name in ("dist_spd_n2_a0.60", "dist_spd_n2_a0.80", "dist_spd_n2_a0.95")]
    spdsim(
        "validate",
        *runs,
        "--profile",
        str(data / "profile_calibrated.json"),
        "--baseline",
        str(data / "dist_ar"),
        "--out",
        str(out / "validate.csv"),
        stdout=out / "validate.txt",
    )
    spdsim("optimize", "--out", str(out / "optimize.csv"), stdout=out / "optimize.txt")
    # Paths differ between checkouts and layouts; the table text is compared without them.
    for name in ("validate.txt", "optimize.txt"):
        path = out / name
        text = path.read_text().replace(str(data), "<measured>").replace(str(ROOT), "<repo>")
        text = text.replace(str(out), "<out>")
        # a table title is centred on the path's length: compare lines without their margins
        path.write_text("".join(line.strip() + "\n" for line in text.splitlines()))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__.split("\n\n")[-1])
    main(Path(sys.argv[1]))
