"""Noop: a statement with nothing to do (DROP … IF EXISTS of what does not exist)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from dosql.router.engine.base import Line, Operator
from dosql.router.pool import ShardResult

if TYPE_CHECKING:
    from dosql.router.engine.base import Context


@dataclass(eq=False)
class Noop(Operator):
    kind: ClassVar[str] = "noop"
    is_write: ClassVar[bool] = True
    text: str

    async def execute(self, ctx: Context, params: Any) -> ShardResult:
        return ShardResult(columns=[], rowcount=-1)

    async def describe(self, ctx: Context, params: Any) -> list[Line]:
        return [Line(0, "Noop", None, self.text, "nothing to do")]
