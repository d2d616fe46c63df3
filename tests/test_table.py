"""Columnar rows: what goes in as tuples or column blocks comes out as the same rows, in order."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from spdsim.engine.result import Interval, TokenCommit
from spdsim.engine.table import Table, TableBuilder

row = st.tuples(
    st.sampled_from(["gpu0", "stage1", "controller"]),
    st.integers(0, 10**12),
    st.integers(0, 10**12),
    st.sampled_from(["busy", "comm"]),
    st.sampled_from(["forward", "verify"]),
    st.integers(0, 5),
    st.integers(0, 100),
)


@given(st.lists(st.lists(row, max_size=6), max_size=4))
def test_rows_and_blocks_round_trip_in_order(chunks):
    """Alternate tuple rows and column blocks; the table iterates as the same Interval objects in order."""
    builder = TableBuilder(Interval, text=("resource", "kind", "label"))
    expected = []
    for i, chunk in enumerate(chunks):
        expected += [Interval(*r) for r in chunk]
        if i % 2 or not chunk:
            builder.rows.extend(chunk)
            continue
        names = sorted({r[j] for r in chunk for j in (0, 3, 4)})
        code = {n: k for k, n in enumerate(names)}
        columns = {
            name: np.asarray([code[r[j]] if j in (0, 3, 4) else r[j] for r in chunk], dtype=np.int64)
            for j, name in enumerate(builder.fields)
        }
        builder.add_block(columns, names)
    table = builder.build()
    assert list(table) == expected
    assert len(table) == len(expected)
    assert table == tuple(expected)
    if expected:
        assert table[-1] == expected[-1]
        assert list(table[1:]) == expected[1:]


def test_set_overrides_a_recorded_field_and_totals_are_exact():
    builder = TableBuilder(Interval, text=("resource", "kind", "label"))
    builder.rows.append(("gpu0", 0, 5, "busy", "forward", 0, 0))
    builder.rows.append(("gpu1", 5, 9, "busy", "forward", 0, 0))
    builder.set(1, "kind", "flushed")
    builder.rows.append(("gpu0", 9, 10**15, "busy", "forward", 0, 1))
    table = builder.build()
    assert [iv.kind for iv in table] == ["busy", "flushed", "busy"]
    durations = table.column("end_ns") - table.column("start_ns")
    assert table.totals_by("resource", durations) == {"gpu0": 5 + 10**15 - 9, "gpu1": 4}
    assert list(table.where(table.column("request") == 0)) == list(table)


def test_bool_columns_and_empty_tables():
    builder = TableBuilder(TokenCommit, bools=("from_draft",))
    assert not builder.build()
    builder.rows.append((0, 0, 10, 0, True))
    (token,) = builder.build()
    assert token.from_draft is True
    assert Table.empty(TokenCommit) == ()
    with pytest.raises(IndexError):
        builder.build()[3]
