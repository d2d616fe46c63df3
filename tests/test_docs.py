"""Every document the code cites is in the repository (docs/), and no citation points outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = re.compile(
    r"DESIGN\.md|reference/[\w-]+\.md|(?<![\w/.-])(?:spd|baselines|simulators|offline-assets)\.md"
)
CITED = re.compile(r"docs/([\w-]+\.md)")
# Hardware and model `source` texts are copied verbatim into every run's config.json (and into committed results);
# docs/presets.md says how to read their old references.
VERBATIM = ("spdsim/profiles/hardware/", "spdsim/profiles/models/", "docs/")


def _source_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    suffixes = {".py", ".md", ".sh", ".toml", ".ipynb", ".json"}
    return [ROOT / f for f in listed.split() if Path(f).suffix in suffixes and (ROOT / f).is_file()]


def test_no_citation_points_outside_the_repository():
    offenders = []
    for path in _source_files():
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith(VERBATIM) or relative.startswith("studies/") and "/results/" in relative:
            continue
        for match in OUTSIDE.finditer(path.read_text(errors="replace")):
            offenders.append(f"{relative}: {match.group(0)}")
    assert offenders == []


def test_every_cited_document_exists():
    missing = {
        f"{path.relative_to(ROOT)}: docs/{name}"
        for path in _source_files()
        for name in CITED.findall(path.read_text(errors="replace"))
        if not (ROOT / "docs" / name).is_file()
    }
    assert missing == set()
