"""``python -m dosql.router --config FILE``."""

import sys

from dosql.cli import main

sys.exit(main(["router", *sys.argv[1:]]))
