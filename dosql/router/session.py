"""A client session's transaction state machine: the one truth about its transaction.

A client connection to the router is in one of four states:

- ``idle``: no transaction; every statement runs on its own.
- ``open``: BEGIN ran; statements join the transaction (:class:`Transaction`).
- ``aborted``: an error cost the transaction (a shard lost its part, a statement
  error that rolled it back, a COMMIT that failed): it is rolled back everywhere.
- ``outcome_unknown``: COMMIT raised ``COMMIT_OUTCOME_UNKNOWN`` (a participant was
  lost in the middle of its commit); the outcome can be looked up by gtid.

Why the two failed states exist: the application still believes it is inside
its transaction. If the router went back to ``idle``, the application's next
write would run on its own and commit at once, and its next COMMIT would
return normally: an acknowledged commit of nothing, or a rolled-back write
that survives. So in a failed state every statement, BEGIN and COMMIT is
refused with ``TRANSACTION_ABORTED`` (resp. ``COMMIT_OUTCOME_UNKNOWN`` again)
until the client sends ROLLBACK (the message or the SQL), which returns the
session to ``idle``. An ordinary failed statement (a constraint violation, a
syntax error) costs nothing, as in SQLite: the transaction stays ``open``.

Every error that leaves the session in a failed state carries
``details["transaction_state"]`` and ``details["gtid"]``, so a driver can
mirror the state without guessing from error codes.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from dosql.errors import CommitOutcomeUnknownError, DoSQLError, TransactionAbortedError

if TYPE_CHECKING:
    from dosql.router.transactions import Transaction

OUTCOME_UNKNOWN_CODE = "COMMIT_OUTCOME_UNKNOWN"


class TxState(StrEnum):
    IDLE = "idle"
    OPEN = "open"
    ABORTED = "aborted"
    OUTCOME_UNKNOWN = "outcome_unknown"


FAILED = (TxState.ABORTED, TxState.OUTCOME_UNKNOWN)


def lookup_hint(gtid: str | None) -> str:
    """How an application learns what became of a transaction whose outcome is unknown."""
    if not gtid:
        return "its outcome cannot be looked up (the transaction has no global id)"
    return (
        f"look it up with SELECT dosql_transaction_status('{gtid}') "
        "(committed / aborted / in_doubt; Connection.transaction_outcome() in the driver)"
    )


class ClientSession:
    """Per client connection: its scope and its transaction, in one of :class:`TxState`.

    ``tx`` stays assignable (a sub-session of ``executemany`` shares its parent's
    transaction); the state is derived from ``tx`` and the recorded failure so
    the two can never disagree.
    """

    def __init__(self, scope: str) -> None:
        self.scope = scope
        self.tx: Transaction | None = None
        self.gtid: str | None = None
        self.began_at: float | None = None  # wall clock (s) of BEGIN
        self.failed: TxState | None = None  # ABORTED / OUTCOME_UNKNOWN, or None
        self.failed_at: float | None = None
        self.reason: str = ""  # why the transaction failed, for every later refusal
        self.cause_code: str | None = None
        self.shards: list[str] = []  # the shards the failed transaction had touched
        self.malformed_logged = False  # a malformed request is logged once per connection

    @property
    def read_only(self) -> bool:
        return self.scope == "read"

    @property
    def state(self) -> TxState:
        if self.failed is not None:
            return self.failed
        return TxState.OPEN if self.tx is not None else TxState.IDLE

    # ------------------------------------------------------------------ transitions

    def begin(self, tx: Transaction) -> None:
        """idle -> open."""
        self.end()
        self.tx = tx
        self.gtid = tx.gtid
        self.began_at = time.time()

    def end(self) -> None:
        """Any state -> idle (after COMMIT, ROLLBACK, or the connection going away)."""
        self.tx = None
        self.gtid = None
        self.began_at = None
        self.failed = None
        self.failed_at = None
        self.reason = ""
        self.cause_code = None
        self.shards = []

    def fail(
        self, state: TxState, exc: DoSQLError, shards: list[str], *, commit: bool = False
    ) -> None:
        """open -> aborted / outcome_unknown; ``exc`` (the cause) is annotated for the client."""
        assert state in FAILED
        self.tx = None
        self.failed = state
        self.failed_at = time.time()
        self.reason = ("its COMMIT failed: " if commit else "") + f"[{exc.code}] {exc.message}"
        self.cause_code = exc.code
        self.shards = list(shards)
        gtid = exc.details.get("gtid") or self.gtid
        self.gtid = gtid
        exc.details["transaction_state"] = str(state)
        exc.details["gtid"] = gtid
        if state is TxState.ABORTED:
            hint = "; ROLLBACK to end the transaction, then retry it"
        else:
            hint = f"; {lookup_hint(gtid)}; ROLLBACK to end the transaction"
        if hint not in exc.message:
            exc.message += hint
            exc.args = (exc.message,)

    async def commit(self) -> dict[str, Any]:
        """COMMIT of an open transaction: idle when it committed, failed otherwise.

        The commit code's contract: it returns when every participant committed;
        ``COMMIT_OUTCOME_UNKNOWN`` means the outcome is not known; any other error
        means the transaction is rolled back everywhere. An unexpected exception
        leaves the outcome unknown too: nothing says what happened.
        Returns the reply's info (the gtid).
        """
        tx = self.tx
        assert tx is not None and self.failed is None
        gtid = self.gtid
        shards = list(tx.shards)
        try:
            info = await tx.commit() or {}
        except DoSQLError as exc:
            state = TxState.OUTCOME_UNKNOWN if exc.code == OUTCOME_UNKNOWN_CODE else TxState.ABORTED
            self.fail(state, exc, shards, commit=True)
            raise
        except Exception as exc:
            err = CommitOutcomeUnknownError(
                f"the commit of transaction {gtid} failed unexpectedly ({exc!r}), its outcome "
                "is unknown",
                details={"gtid": gtid},
            )
            self.fail(TxState.OUTCOME_UNKNOWN, err, shards, commit=True)
            raise err from exc
        self.end()
        return {**info, "gtid": gtid} if gtid else info

    # ------------------------------------------------------------------ refusals

    def failure_error(self) -> DoSQLError:
        """The error every statement / BEGIN / COMMIT of a failed session gets."""
        details: dict[str, Any] = {
            "gtid": self.gtid,
            "transaction_state": str(self.state),
            "cause_code": self.cause_code,
            "shards": self.shards,
        }
        if self.failed is TxState.OUTCOME_UNKNOWN:
            return CommitOutcomeUnknownError(
                f"the outcome of the commit of transaction {self.gtid} is unknown "
                f"({self.reason}); {lookup_hint(self.gtid)}; ROLLBACK to end the transaction",
                details=details,
            )
        return TransactionAbortedError(
            f"the transaction was rolled back because {self.reason}; ROLLBACK to end it, "
            "then retry the transaction",
            details=details,
        )

    def check_usable(self) -> None:
        """Raise :meth:`failure_error` when the session's transaction has failed."""
        if self.failed is not None:
            raise self.failure_error()

    # ------------------------------------------------------------------ observability

    def describe(self, now: float | None = None) -> dict[str, Any]:
        """One row of ``/admin/transactions/active``."""
        now = time.time() if now is None else now
        tx = self.tx
        return {
            "gtid": self.gtid,
            "state": str(self.state),
            "age_s": round(now - self.began_at, 3) if self.began_at is not None else None,
            "shards": list(tx.shards) if tx is not None else list(self.shards),
            "scope": self.scope,
            "reason": self.reason or None,
        }
