"""Provenance shared by the study scripts: which commit produced a result."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_head() -> str:
    """The commit the results were produced from (working-tree changes of the checkout are not recorded)."""
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    )
    return done.stdout.strip() or "unknown"
