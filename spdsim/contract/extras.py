"""Optional extras of the install (``pip install 'spdsim[<extra>]'``) and the one-line error when one is missing.

The base install simulates and writes CSV; Parquet files need the ``parquet`` extra (pyarrow), the executor the
``executor`` extra and Dask sweeps the ``dask`` extra (``pyproject.toml``).
"""

from __future__ import annotations

from spdsim.errors import SpdsimError

# import name of a package -> the extra that installs it
EXTRA_OF = {
    "torch": "executor",
    "transformers": "executor",
    "safetensors": "executor",
    "gguf": "executor",
    "dask": "dask",
    "distributed": "dask",
    "pyarrow": "parquet",
}
PARQUET_SUFFIXES = (".parquet", ".pq")


def install_line(extra: str) -> str:
    return f"pip install 'spdsim[{extra}]'"


def missing_extra_message(what: str, extra: str) -> str:
    """``Parquet output needs the 'parquet' extra: pip install 'spdsim[parquet]'``."""
    return f"{what} needs the '{extra}' extra: {install_line(extra)}"


def require_parquet(what: str = "Parquet output") -> None:
    """Raise the one-line SpdsimError naming the ``parquet`` extra unless pyarrow can be imported."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise SpdsimError(missing_extra_message(what, "parquet")) from None


def is_parquet(path: object) -> bool:
    return str(path).lower().endswith(PARQUET_SUFFIXES)
