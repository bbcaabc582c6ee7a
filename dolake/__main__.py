"""``python -m dolake serve ...`` is ``dolake serve ...``."""

import sys

from dolake.cli import main

sys.exit(main())
