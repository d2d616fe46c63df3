"""What the study scripts share: their command line and the provenance they write beside their results."""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
from pathlib import Path

from spdsim import __version__


def git_head() -> str:
    """The commit the results were produced from (working-tree changes of the checkout are not recorded)."""
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    )
    return done.stdout.strip() or "unknown"


def write_provenance(out_dir: Path, study: str, runs: list, details: dict) -> dict:
    """Write scenarios.json (``runs``, replayable with ``spdsim compare``) and metadata.json; return the metadata.

    The metadata is ``details`` plus the stamp every study carries: study name, spdsim and Python versions, date
    and commit.
    """
    (out_dir / "scenarios.json").write_text(json.dumps({"name": study, "runs": runs}, indent=1) + "\n")
    meta = {
        "study": study,
        "spdsim_version": __version__,
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "git_head": git_head(),
        **details,
    }
    (out_dir / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def study_arguments(docstring: str, out_dir: Path) -> argparse.Namespace:
    """The command line every study takes: ``--out`` (default ``out_dir``) and ``--workers``."""
    parser = argparse.ArgumentParser(description=docstring.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=out_dir)
    parser.add_argument("--workers", type=int, default=0, help="processes (0: one per core)")
    return parser.parse_args()
