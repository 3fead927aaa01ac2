"""``python -m plugqdisc``: the command line (plugqdisc/cli.py)."""

import sys

from .cli import main

sys.exit(main())
