import sys

from reference.server import main

sys.exit(main())
