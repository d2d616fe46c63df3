"""Command groups other packages add to ``spdsim`` (``spdsim exec`` from the executor), found by name.

A package declares a group in its metadata, entry-point group ``spdsim.commands``, name = the sub-command, value =
``module:typer_app``. The simulator never imports such a package by name: it loads what the metadata declares,
and a group whose package is not installed (the executor extra) is left out.

An editable install keeps the metadata of the day it was installed; a group this checkout's ``pyproject.toml``
declares but the metadata lacks is read from the checkout, so a new group needs no re-install.
"""

from __future__ import annotations

import importlib
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

GROUP = "spdsim.commands"
HELP = {"exec": "Run schedules for real on a GPU (executor extra)."}


def declared_commands() -> dict[str, str]:
    """Sub-command name -> ``module:attribute``, from the installed metadata and this checkout's pyproject."""
    declared = {entry.name: entry.value for entry in metadata.entry_points(group=GROUP)}
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if pyproject.is_file():
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover
            import tomli as tomllib
        project = tomllib.loads(pyproject.read_text()).get("project", {})
        for name, value in project.get("entry-points", {}).get(GROUP, {}).items():
            declared.setdefault(name, value)
    return declared


def load_commands() -> dict[str, Any]:
    """Sub-command name -> the typer app, for every declared group whose package imports."""
    apps: dict[str, Any] = {}
    for name, value in sorted(declared_commands().items()):
        module, _, attribute = value.partition(":")
        try:
            apps[name] = getattr(importlib.import_module(module), attribute)
        except ImportError:
            continue
    return apps
