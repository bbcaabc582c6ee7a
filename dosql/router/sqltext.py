"""Statement text: tokens with positions, parameters, and span splicing.

The router sends shards the client's own SQL text whenever it can (a single
target shard gets the statement exactly as written), and otherwise splices
the original text by token spans (adds hidden ORDER BY columns, drops a
LIMIT clause, keeps some rows of a multi-row INSERT). Splicing text instead of
regenerating it from the sqlglot AST keeps every expression, column name and
literal byte-for-byte what SQLite would have seen, so results (including
result column names) are the ones a single SQLite database gives.

Positional ``?`` parameters are numbered by their order in the text (the
tokenizer skips strings, comments and quoted names). For the AST, each ``?``
is replaced by a named placeholder ``:__dosql_p<N>`` before parsing, so every
placeholder node knows its parameter index.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot.dialects.sqlite import SQLite
from sqlglot.tokens import TokenType

from dosql.errors import NotSupportedError, QueryError

PARAM_PREFIX = "__dosql_p"
_DIALECT = SQLite()


@dataclass(frozen=True)
class Tok:
    type: TokenType
    text: str
    start: int  # inclusive
    end: int  # exclusive
    depth: int  # parenthesis depth before this token


@dataclass(frozen=True)
class Params:
    """Where parameters occur: token index of each positional ``?`` in order, named ones."""

    positional: tuple[int, ...]  # token indices
    named: frozenset[str]


def tokenize(sql: str) -> list[Tok]:
    try:
        raw = _DIALECT.tokenize(sql)
    except Exception as exc:  # sqlglot TokenError
        raise QueryError(f"cannot tokenize statement: {exc}", code="SYNTAX_ERROR") from None
    out: list[Tok] = []
    depth = 0
    for t in raw:
        if t.token_type == TokenType.R_PAREN:
            depth -= 1
        out.append(Tok(t.token_type, t.text, t.start, t.end + 1, depth))
        if t.token_type == TokenType.L_PAREN:
            depth += 1
    return out


def find_params(sql: str, toks: list[Tok]) -> Params:
    positional: list[int] = []
    named: set[str] = set()
    for i, t in enumerate(toks):
        if t.type == TokenType.PLACEHOLDER and t.text == "?":
            nxt = toks[i + 1] if i + 1 < len(toks) else None
            if nxt is not None and nxt.start == t.end and nxt.type == TokenType.NUMBER:
                raise NotSupportedError(
                    "numbered parameters (?NNN) are not supported by the router: "
                    "use ? or :name parameters"
                )
            positional.append(i)
        elif t.type == TokenType.COLON:
            nxt = toks[i + 1] if i + 1 < len(toks) else None
            if nxt is not None and nxt.start == t.end:
                named.add(nxt.text)
        elif t.type == TokenType.PARAMETER or (t.type == TokenType.VAR and t.text[:1] == "$"):
            raise NotSupportedError(
                "parameters written @name or $name are not supported by the router: "
                "use ? or :name parameters"
            )
    if positional and named:
        raise QueryError("a statement cannot mix ? and :name parameters", code="INVALID_PARAMETERS")
    return Params(tuple(positional), frozenset(named))


def numbered_text(sql: str, toks: list[Tok], params: Params) -> str:
    """The text with each positional ``?`` replaced by ``:__dosql_p<N>`` (1-based)."""
    if not params.positional:
        return sql
    parts: list[str] = []
    pos = 0
    for n, ti in enumerate(params.positional, start=1):
        t = toks[ti]
        parts.append(sql[pos : t.start])
        parts.append(f":{PARAM_PREFIX}{n}")
        pos = t.end
    parts.append(sql[pos:])
    return "".join(parts)


def positional_index(name: str) -> int | None:
    """0-based parameter index of a placeholder produced by :func:`numbered_text`."""
    if name.startswith(PARAM_PREFIX) and name[len(PARAM_PREFIX) :].isdigit():
        return int(name[len(PARAM_PREFIX) :]) - 1
    return None


def split_top(toks: list[Tok], start: int, stop: int, depth: int) -> list[tuple[int, int]]:
    """Token index ranges [a, b) between start and stop separated by commas at ``depth``."""
    items: list[tuple[int, int]] = []
    a = start
    for i in range(start, stop):
        if toks[i].type == TokenType.COMMA and toks[i].depth == depth:
            items.append((a, i))
            a = i + 1
    if a < stop:
        items.append((a, stop))
    return items


def span_text(sql: str, toks: list[Tok], a: int, b: int) -> str:
    """Original text of tokens [a, b)."""
    if a >= b:
        return ""
    return sql[toks[a].start : toks[b - 1].end]


def positional_in(params: Params, toks: list[Tok], spans: list[tuple[int, int]]) -> list[int]:
    """Parameter indices (0-based) of the ``?`` whose character offsets fall in ``spans``."""
    out = []
    for n, ti in enumerate(params.positional):
        s = toks[ti].start
        if any(a <= s < b for a, b in spans):
            out.append(n)
    return out


def leading_words(toks: list[Tok], n: int = 3) -> list[str]:
    return [t.text.upper() for t in toks[:n]]
