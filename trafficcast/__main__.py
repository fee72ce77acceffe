"""``python -m trafficcast``: the same entry point as the ``trafficcast`` console script."""

import sys

from trafficcast.app.entry import main

sys.exit(main())
