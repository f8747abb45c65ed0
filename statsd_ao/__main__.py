"""``python -m statsd_ao``."""

import sys

from statsd_ao.cli import main

sys.exit(main())
