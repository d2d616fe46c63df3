"""Rows of a simulation stored as columns: one numpy array per field, no Python object per row.

A full-trace run records tens of spans per SPD cycle; one dataclass (or list) per span kept the garbage
collector rescanning millions of live objects, which cost more than the simulation. A ``Table`` holds the same
rows as numpy columns (strings as small codes into a name list) and builds a row object only while it is
iterated, so consumers keep writing ``for iv in result.intervals: iv.start_ns``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import fields
from typing import Any, Generic, TypeVar, overload

import numpy as np

Row = TypeVar("Row")


class Table(Sequence[Row]):
    """Immutable rows of ``row_type`` (a frozen dataclass) held as columns; iterates as ``row_type`` objects."""

    __slots__ = ("_columns", "_names", "_row_type", "_text")

    def __init__(
        self,
        row_type: type[Row],
        columns: dict[str, np.ndarray],
        names: tuple[str, ...] = (),
        text: tuple[str, ...] = (),
    ):
        self._row_type = row_type
        self._columns = columns
        self._names = names  # decoded values of the text columns
        self._text = text  # fields stored as codes into ``names``

    @classmethod
    def empty(cls, row_type: type[Row], text: tuple[str, ...] = ()) -> Table[Row]:
        return cls(row_type, {f.name: np.zeros(0, dtype=np.int64) for f in fields(row_type)}, (), text)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(next(iter(self._columns.values()))) if self._columns else 0

    def __bool__(self) -> bool:
        return len(self) > 0

    def column(self, name: str) -> np.ndarray:
        """One field as a numpy array (text fields as an object array of strings)."""
        values = self._columns[name]
        if name in self._text:
            return np.asarray(self._names, dtype=object)[values] if len(values) else np.zeros(0, dtype=object)
        return values

    def totals_by(self, key: str, values: np.ndarray) -> dict[str, int]:
        """Exact integer sum of ``values`` per distinct value of the text field ``key``."""
        codes = self._columns[key]
        return {self._names[k]: int(values[codes == k].sum()) for k in np.unique(codes).tolist()}

    def where(self, mask: np.ndarray) -> Table[Row]:
        """The rows where ``mask`` is true, in order."""
        return Table(self._row_type, {k: v[mask] for k, v in self._columns.items()}, self._names, self._text)

    def _lists(self) -> list[list[Any]]:
        names = self._names
        lists = []
        for f in fields(self._row_type):  # type: ignore[arg-type]
            values = self._columns[f.name].tolist()
            lists.append([names[v] for v in values] if f.name in self._text else values)
        return lists

    def __iter__(self) -> Iterator[Row]:
        row_type = self._row_type
        for values in zip(*self._lists(), strict=True):
            yield row_type(*values)

    @overload
    def __getitem__(self, index: int) -> Row: ...

    @overload
    def __getitem__(self, index: slice) -> Table[Row]: ...

    def __getitem__(self, index: int | slice) -> Row | Table[Row]:
        if isinstance(index, slice):
            return Table(
                self._row_type, {k: v[index] for k, v in self._columns.items()}, self._names, self._text
            )
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        values = []
        for f in fields(self._row_type):  # type: ignore[arg-type]
            value = self._columns[f.name][index].item()
            values.append(self._names[value] if f.name in self._text else value)
        return self._row_type(*values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Table):
            return tuple(self) == tuple(other)
        if isinstance(other, (tuple, list)):
            return tuple(self) == tuple(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Table[{self._row_type.__name__}]({len(self)} rows)"


class TableBuilder(Generic[Row]):
    """Collects rows (tuples, appended one by one) and column blocks (numpy, appended whole) in order."""

    def __init__(self, row_type: type[Row], text: tuple[str, ...] = (), bools: tuple[str, ...] = ()):
        self.row_type = row_type
        self.text = text
        self.bools = bools
        self.fields = tuple(f.name for f in fields(row_type))  # type: ignore[arg-type]
        self.rows: list[tuple] = []  # hot paths append tuples here directly
        self._blocks: list[tuple[dict[str, np.ndarray], tuple[str, ...]]] = []
        self._count = 0  # rows in finished blocks
        self._overrides: dict[tuple[int, str], Any] = {}

    def __len__(self) -> int:
        return self._count + len(self.rows)

    def set(self, index: int, name: str, value: Any) -> None:
        """Change one field of an already recorded row (e.g. a span's kind when its token is flushed)."""
        self._overrides[(index, name)] = value

    def add_block(self, columns: dict[str, np.ndarray], names: Sequence[str] = ()) -> None:
        """Append rows given as columns; text columns are codes into ``names``."""
        self._seal_rows()
        self._blocks.append((columns, tuple(names)))
        self._count += len(next(iter(columns.values())))

    def _seal_rows(self) -> None:
        if not self.rows:
            return
        rows = list(self.rows)
        self.rows.clear()  # in place: hot paths hold ``rows.append``
        columns: dict[str, np.ndarray] = {}
        names: list[str] = []
        for name, values in zip(self.fields, zip(*rows, strict=True), strict=True):
            if name in self.text:
                unique, codes = np.unique(np.asarray(values, dtype=str), return_inverse=True)
                columns[name] = codes.astype(np.int64) + len(names)
                names.extend(unique.tolist())
            elif name in self.bools:
                columns[name] = np.asarray(values, dtype=bool)
            else:
                columns[name] = np.asarray(values, dtype=np.int64)
        self._blocks.append((columns, tuple(names)))
        self._count += len(rows)

    def build(self) -> Table[Row]:
        """The recorded rows as one Table (names shared across blocks, overrides applied)."""
        self._seal_rows()
        if not self._blocks:
            return Table.empty(self.row_type, self.text)
        index: dict[str, int] = {}
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.fields}
        for columns, names in self._blocks:
            remap = np.asarray([index.setdefault(n, len(index)) for n in names], dtype=np.int64)
            for name in self.fields:
                values = columns[name]
                parts[name].append(remap[values] if name in self.text and len(values) else values)
        merged = {name: np.concatenate(values) for name, values in parts.items()}
        for name in self.text:
            merged[name] = merged[name].astype(np.int64)
        for (row, name), value in self._overrides.items():
            merged[name][row] = index.setdefault(value, len(index)) if name in self.text else value
        return Table(self.row_type, merged, tuple(index), self.text)
