"""The one output writer: every file or run directory spdsim writes goes through here.

Rules (issue 12): the path is checked before any work (``check_out_dir`` / ``check_out_file``); a run directory
is new, or an empty one, or one spdsim made itself (it holds the marker ``.spdsim``, which lists the files
spdsim wrote there); a non-empty directory spdsim did not make is refused, and one it made is rewritten only
with ``force``, which replaces spdsim's own files and leaves every other file alone. Everything is written
atomically: files are built aside and renamed into place, so a failure (or Ctrl-C) leaves the previous state.
Files get the ordinary mode (0666 less the umask), not the private mode of temporary files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from spdsim.contract.rundir import MEASURED_FILES, SERVING_TRACE, SIMULATED_FILES
from spdsim.errors import SpdsimError

MARKER = ".spdsim"
# run files of spdsim and executor run directories: a directory holding only these (written before the marker
# existed) counts as spdsim's own
KNOWN_RUN_FILES = frozenset((*SIMULATED_FILES, SERVING_TRACE, *MEASURED_FILES))


def _nonempty(path: str | Path, option: str) -> Path:
    if not str(path).strip():
        raise SpdsimError(f"{option}: empty path; give a file or directory name")
    return Path(path)


def _probe_writable(path: Path, option: str) -> None:
    """The nearest existing ancestor of ``path`` must be a directory we can create entries in."""
    ancestor = path.absolute()
    if ancestor.is_file():  # an output file to be replaced: its directory must take new entries
        ancestor = ancestor.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise SpdsimError(f"{option}: '{ancestor}' is not a directory, so '{path}' cannot be made")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".spdsim-probe-", dir=ancestor))
    except OSError as exc:
        raise SpdsimError(f"{option}: cannot write under '{ancestor}' ({exc.strerror or exc})") from None


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _file_mode() -> int:
    return 0o666 & ~_umask()


def own_files(out_dir: Path) -> list[str] | None:
    """The files spdsim wrote in ``out_dir`` (from its marker), or None if spdsim did not make it."""
    marker = out_dir / MARKER
    if not marker.is_file():
        try:
            entries = {p.name for p in out_dir.iterdir()}
        except OSError:
            return None
        return sorted(entries) if entries and entries <= KNOWN_RUN_FILES else None
    try:
        files = json.loads(marker.read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return None
    return [f for f in files if isinstance(f, str) and "/" not in f and f not in ("", ".", "..")]


def check_out_dir(out_dir: str | Path, force: bool = False, option: str = "--out") -> Path:
    """Refuse, before any work, a run directory that cannot or must not be written."""
    out_dir = _nonempty(out_dir, option)
    if out_dir.exists() or out_dir.is_symlink():
        if not out_dir.is_dir():
            raise SpdsimError(f"{option}: '{out_dir}' exists and is not a directory")
        entries = [p.name for p in out_dir.iterdir()]
        if entries:
            if own_files(out_dir) is None:
                raise SpdsimError(
                    f"{option}: '{out_dir}' is a non-empty directory spdsim did not make; give a new directory"
                )
            if not force:
                raise SpdsimError(
                    f"{option}: '{out_dir}' holds an earlier spdsim run; give a new directory, or --force "
                    "to replace its run files (other files stay)"
                )
    _probe_writable(out_dir, option)
    return out_dir


def check_out_file(path: str | Path, suffixes: tuple[str, ...] = (), option: str = "--out") -> Path:
    """Refuse, before any work, an output file with a wrong suffix, a directory in its place, or no write access."""
    path = _nonempty(path, option)
    if suffixes and path.suffix.lower() not in suffixes:
        raise SpdsimError(f"{option}: '{path}' must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise SpdsimError(f"{option}: '{path}' is a directory; give a file name")
    if path.exists() and not path.is_file():
        raise SpdsimError(f"{option}: '{path}' exists and is not a regular file")
    _probe_writable(path, option)
    return path


def write_file(path: str | Path, write: Callable[[Path], None]) -> Path:
    """``write(temporary)`` then rename onto ``path``; nothing is left behind on failure.

    The temporary file keeps ``path``'s suffix, so writers that pick a format by suffix (pandas, matplotlib) work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".part{path.suffix}", dir=path.parent
    )
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, _file_mode())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_text_file(path: str | Path, text: str) -> Path:
    def write(temporary: Path) -> None:
        temporary.write_text(text)

    return write_file(path, write)


def write_dir(out_dir: str | Path, writers: dict[str, Callable[[], str | bytes]], force: bool = True) -> Path:
    """Write one file per writer into ``out_dir`` (a new, empty or spdsim-made directory; see module docstring).

    Every file is built in a staging directory first; only when all of them are built are they renamed into
    place. In a directory spdsim made, its earlier files that this run does not write are removed; files it did
    not write are never touched.
    """
    out_dir = check_out_dir(out_dir, force=force)
    exists = out_dir.is_dir()
    if not exists:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".spdsim-staging-", dir=out_dir if exists else out_dir.parent))
    try:
        mode = _file_mode()
        for filename, write in writers.items():
            content = write()
            if isinstance(content, bytes):
                (staging / filename).write_bytes(content)
            else:
                (staging / filename).write_text(content)
            os.chmod(staging / filename, mode)
        (staging / MARKER).write_text(json.dumps({"written_by": "spdsim", "files": sorted(writers)}) + "\n")
        os.chmod(staging / MARKER, mode)
        if not exists:
            os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; a run dir is ordinary
            staging.rename(out_dir)
            return out_dir
        stale = [f for f in own_files(out_dir) or [] if f not in writers]
        for filename in [*writers, MARKER]:
            os.replace(staging / filename, out_dir / filename)
        for filename in stale:
            (out_dir / filename).unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def write_atomically(
    out_dir: str | Path, writers: dict[str, Callable[[], str | bytes]], force: bool = True
) -> Path:
    """Create ``out_dir`` with one file per writer, atomically (the rules are ``spdsim.contract.files.write_dir``'s)."""
    return write_dir(out_dir, writers, force=force)
