"""``dosql vschema --file PATH``: validate a VSchema and print its routing table.

PATH is either a VSchema file or a deployment config (``dosql.toml``) whose
VSchema is inline (``[vschema]``) or a path (``vschema = "vschema.toml"``).
A file is taken as a deployment config when it has any deployment key
(``vschema``, ``log_level``, ``[router]``, ``[shard]``, ``[lake]``, ``[cdc]``,
``[auth]``). Errors are project errors, which the ``dosql`` dispatcher prints
as one line with exit code 2.
"""

from __future__ import annotations

import argparse

from vschema.loader import load, read_toml
from vschema.model import VSchema
from vschema.report import routing_table

DEPLOYMENT_KEYS = ("vschema", "log_level", "router", "shard", "lake", "cdc", "auth")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--file",
        "-f",
        required=True,
        metavar="PATH",
        help="a VSchema TOML file, or a dosql.toml whose VSchema is inline or a path",
    )
    parser.add_argument(
        "--shard-count",
        type=int,
        default=4,
        metavar="N",
        help="shards when a VSchema file lists neither [[shards]] nor shard_count (default 4)",
    )


def load_any(path: str, *, default_shard_count: int = 4) -> VSchema:
    """Load a VSchema from a VSchema file or from a deployment config."""
    data = read_toml(path)
    if any(key in data for key in DEPLOYMENT_KEYS):
        from dosql import config

        return config.load(path).load_vschema()
    return load(path, default_shard_count=default_shard_count)


def run(args: argparse.Namespace) -> int:
    vs = load_any(args.file, default_shard_count=args.shard_count)
    print(routing_table(vs), end="")
    return 0
