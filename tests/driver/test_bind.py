"""bind(): the exact-type fast path for plain rows must equal the general adaptation."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import dosql.driver as dbapi
from dosql.driver.cursor import bind


class _Seq(Sequence):
    """A sequence that is neither tuple nor list, so bind() takes its general path."""

    def __init__(self, values: list[Any]) -> None:
        self._values = values

    def __getitem__(self, index: Any) -> Any:
        return self._values[index]

    def __len__(self) -> int:
        return len(self._values)


class _Str(str):
    pass


VALUES = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-(2**70), 2**70),
    st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1]),
    st.floats(),
    st.text(max_size=8),
    st.text(max_size=8).map(_Str),
    st.binary(max_size=8),
    st.binary(max_size=8).map(bytearray),
    st.booleans(),
    st.dates(),
    st.datetimes(),
    st.times(),
    st.just(object()),
)


def _outcome(params: Any) -> tuple[str, Any]:
    try:
        out = bind(params)
    except dbapi.Error as exc:
        return ("error", (type(exc), exc.code, str(exc)))
    # compare values with their types (True vs 1, str subclass vs str)
    return ("ok", None if out is None else [(type(v), repr(v)) for v in out])


@settings(max_examples=300, deadline=None)
@given(st.lists(VALUES, max_size=6))
def test_bind_fast_path_matches_general_path(values: list[Any]) -> None:
    general = _outcome(_Seq(values))
    assert _outcome(tuple(values)) == general
    assert _outcome(list(values)) == general


def test_bind_copies_the_row() -> None:
    row = [1, "a", 0.5, None, b"x"]
    bound = bind(row)
    assert bound == row and bound is not row
    assert bind(()) is None and bind([]) is None
    assert bind((datetime.date(2024, 1, 2), True)) == ["2024-01-02", 1]
