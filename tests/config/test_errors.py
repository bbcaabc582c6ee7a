"""dosql.errors: every code survives the wire with its class, category and details."""

from __future__ import annotations

import msgspec
import pytest

from dosql import errors
from dosql.errors import CODES, Category, DoSQLError, from_wire


@pytest.mark.parametrize("code", list(CODES))
def test_round_trip_every_code(code: str) -> None:
    cls = CODES[code]
    original = cls("something went wrong: do X", code=code, details={"table": "users", "n": 3})
    # Through msgpack, as errors travel between processes.
    wire = msgspec.msgpack.decode(msgspec.msgpack.encode(original.to_wire()))
    back = from_wire(wire)
    assert type(back) is cls
    assert back.code == code
    assert back.category == original.category
    assert back.message == original.message
    assert back.details == {"table": "users", "n": 3}
    assert code in str(back)
    assert wire["category"] == str(cls.category)


def test_every_code_has_a_categorised_class() -> None:
    for code, cls in CODES.items():
        assert issubclass(cls, DoSQLError)
        assert code == code.upper()
        if cls is not errors.InternalError:
            assert cls.category is not Category.GENERAL, code


def test_default_codes_and_hierarchy() -> None:
    assert errors.ValidationError("x").code == "INVALID_INPUT"
    assert errors.ConfigurationError("x").category is Category.CONFIGURATION
    assert issubclass(errors.NotSupportedError, errors.QueryError)
    assert issubclass(errors.TimeoutError_, errors.RPCError)


@pytest.mark.parametrize(
    "wire",
    [
        {},
        {"code": None},
        {"code": "NO_SUCH_CODE", "message": "m"},
        {"type": "NotAClass", "message": 5, "details": "not-a-dict"},
    ],
)
def test_unknown_shapes_become_internal(wire: dict) -> None:
    err = from_wire(wire)
    assert isinstance(err, DoSQLError)
    assert type(err) is errors.InternalError
    assert isinstance(err.details, dict)


def test_code_picks_class_when_type_unknown() -> None:
    err = from_wire({"code": "TABLE_NOT_FOUND", "message": "no t"})
    assert type(err) is errors.NotFoundError and err.code == "TABLE_NOT_FOUND"
