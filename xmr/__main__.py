"""``python -m xmr``: the same command line as the ``xmr`` script."""

import sys

from xmr.cli import main

sys.exit(main())
