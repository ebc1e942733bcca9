"""``python -m gateway.simulator``."""

import sys

from gateway.simulator.cli import main

sys.exit(main())
