"""``python -m harness``: the same command line as ``harness``."""

import sys

from raceharness.commands.cli import main

sys.exit(main())
