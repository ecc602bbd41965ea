import sys

from raceharness.reference.server import main

sys.exit(main())
