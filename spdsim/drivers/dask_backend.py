"""Run sweep chunks on a Dask distributed cluster instead of the local process pool.

The chunks and the function that simulates them are the ones the process pool uses, and rows are placed back
by index, so a sweep gives the same table on either backend. dask is an optional extra (``pip install
'spdsim[dask]'``); it is imported only when a scheduler address is given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from spdsim.errors import SpdsimError

Chunk = list[tuple[int, Any]]


def run_chunks_on_dask(
    address: str,
    function: Callable[[Chunk], list[tuple[int, dict[str, Any]]]],
    chunks: Sequence[Chunk],
    advance: Callable[[int], None],
    connect_timeout_s: float = 30.0,
) -> list[tuple[int, dict[str, Any]]]:
    """``function`` over every chunk on the cluster at ``address``; (index, row) pairs."""
    try:
        from distributed import Client
    except ImportError:
        raise SpdsimError(
            "--scheduler: dask is not installed (pip install 'spdsim[dask]' or 'dask[distributed]')"
        ) from None
    try:
        client = Client(address, timeout=connect_timeout_s, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise SpdsimError(f"--scheduler: cannot reach a Dask scheduler at '{address}' ({exc})") from None
    done: list[tuple[int, dict[str, Any]]] = []
    try:
        futures = client.map(function, list(chunks), pure=False)
        for future in futures:  # in submission order; the cluster runs them concurrently meanwhile
            rows = client.gather(future)
            done.extend(rows)
            advance(len(rows))
    finally:
        client.close()
    return done
