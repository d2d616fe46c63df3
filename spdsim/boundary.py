"""The CLI's one error boundary: every failure of a command ends in one line on stderr and an exit code.

* expected failures (a user mistake ``SpdsimError``, an OS error on a named path, a missing optional package,
  running out of memory) print ``error: <one line>`` and exit 2;
* Ctrl-C prints ``interrupted: nothing was written`` and exits 130 (the shell convention for SIGINT); the
  writers in ``spdsim.contract.files`` are atomic, so no partial file is left;
* anything else is a bug: one line naming the exception and a log file holding the traceback, exit 1.

Commands of ``spdsim`` and ``spdsim exec`` are wrapped with :func:`user_errors`, which also works under typer's
CliRunner; ``spdsim.cli.main`` maps click's own usage errors the same way.
"""

from __future__ import annotations

import datetime
import functools
import os
import tempfile
import traceback
from pathlib import Path

import typer

from spdsim.errors import SpdsimError

EXIT_USER = 2
EXIT_BUG = 1
EXIT_INTERRUPTED = 130

# core dependencies missing from the environment -> what to install (optional ones: spdsim.contract.extras)
PACKAGE_HINTS = {
    "matplotlib": "pip install matplotlib (a dependency of spdsim: pip install -e .)",
    "pandas": "pip install pandas (a dependency of spdsim: pip install -e .)",
}


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def message_of(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, one line) for an expected failure, None for a bug."""
    if isinstance(exc, SpdsimError):
        return EXIT_USER, one_line(exc)
    # deferred: spdsim.contract imports this module
    from spdsim.contract.extras import EXTRA_OF, missing_extra_message

    if isinstance(exc, ModuleNotFoundError) and exc.name:
        top = exc.name.split(".")[0]
        extra = EXTRA_OF.get(top)
        if extra is not None:
            cpu = "; the CPU build: pip install torch==2.13.0" if top == "torch" else ""
            return (
                EXIT_USER,
                f"{missing_extra_message('this command', extra)} ('{top}' is not installed{cpu})",
            )
        hint = PACKAGE_HINTS.get(top)
        if hint is not None:
            return EXIT_USER, f"this command needs the package '{top}', which is not installed: {hint}"
        return None
    if isinstance(exc, ImportError) and "pyarrow" in str(exc):  # pandas: "Unable to find a usable engine"
        return EXIT_USER, missing_extra_message("Parquet input and output", "parquet")
    if isinstance(exc, MemoryError):
        return EXIT_USER, "out of memory: the run is too large for this machine (fewer tokens or requests)"
    if isinstance(exc, OSError) and (exc.filename or exc.strerror):
        where = f"'{exc.filename}': " if exc.filename else ""
        return EXIT_USER, one_line(f"{where}{exc.strerror or exc}")
    return None


def write_log(text: str) -> Path | None:
    """``text`` in a new log file under SPDSIM_LOG_DIR (default: the temporary directory); None if unwritable."""
    folder = Path(os.environ.get("SPDSIM_LOG_DIR") or tempfile.gettempdir())
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f"spdsim-{stamp}-", suffix=".log", dir=folder)
        with os.fdopen(handle, "w") as log:
            log.write(text)
        return Path(name)
    except OSError:
        return None


def log_bug(exc: BaseException) -> Path | None:
    """The traceback, in a log file (``write_log``)."""
    return write_log("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


def fail(exc: BaseException) -> typer.Exit:
    """Print the one line for ``exc`` and return the typer.Exit to raise."""
    if isinstance(exc, KeyboardInterrupt):
        typer.echo("interrupted: stopped, nothing was written", err=True)
        return typer.Exit(EXIT_INTERRUPTED)
    known = message_of(exc)
    if known is not None:
        code, text = known
        typer.echo(f"error: {text}", err=True)
        return typer.Exit(code)
    log = log_bug(exc)
    where = f"traceback in {log}" if log else "no log file could be written"
    typer.echo(
        f"internal error: {type(exc).__name__}: {one_line(exc)[:300]} ({where}; please report it)", err=True
    )
    return typer.Exit(EXIT_BUG)


def user_errors(command):
    """Wrap a typer command in the error boundary (see module docstring)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):  # typer's (vendored click) own exits
            raise
        except (Exception, KeyboardInterrupt) as exc:
            raise fail(exc) from None

    return wrapper
