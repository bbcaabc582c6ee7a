"""``python -m dosql.shard``: the same as ``dosql shard``."""

import sys

from dosql.cli import main

if __name__ == "__main__":
    sys.exit(main(["shard", *sys.argv[1:]]))
