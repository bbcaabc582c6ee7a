"""The TOML writer: tomllib reads back exactly what it wrote; VSchemas round-trip via TOML."""

from __future__ import annotations

import datetime
import math
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vschema
from tests.vschema.test_loader import _random_vschema
from vschema.tomlw import dumps

ROOT = Path(__file__).resolve().parents[2]

keys = st.text(alphabet=st.characters(exclude_categories=("Cs",)), min_size=1, max_size=8)
scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=10),
    st.dates(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(keys, inner, max_size=3),
    ),
    max_leaves=10,
)
documents = st.dictionaries(
    keys,
    st.one_of(
        values,
        st.lists(st.dictionaries(keys, values, max_size=3), min_size=1, max_size=3),
    ),
    max_size=5,
)


@settings(deadline=None, max_examples=150)
@given(documents)
def test_tomllib_reads_back_what_dumps_wrote(doc: dict) -> None:
    assert tomllib.loads(dumps(doc)) == doc


def test_special_values() -> None:
    doc = {
        "a b": {"x.y": 'quote " and \\ and \n and \x7f'},
        "f": [1.5, 1e300, -0.0],
        "inf": math.inf,
        "d": datetime.date(2024, 1, 2),
        "empty": {},
        "none": None,
    }
    back = tomllib.loads(dumps(doc))
    assert back == {k: v for k, v in doc.items() if k != "none"}
    with pytest.raises(TypeError):
        dumps({"b": b"bytes"})


@settings(deadline=None, max_examples=30)
@given(st.data())
def test_vschema_round_trips_through_toml_text(data: st.DataObject) -> None:
    vs = vschema.from_dict(_random_vschema(data))
    again = vschema.from_dict(tomllib.loads(vs.to_toml()))
    assert again == vs
    assert again.shards == vs.shards


def test_quickstart_through_toml_file(tmp_path: Path) -> None:
    vs = vschema.load(ROOT / "examples" / "quickstart" / "vschema.toml")
    path = tmp_path / "written.toml"
    path.write_text(vs.to_toml())
    again = vschema.load(path)
    assert again == vs
    assert [again.shard_for("users", k) for k in range(100)] == [
        vs.shard_for("users", k) for k in range(100)
    ]
