"""``python -m accelframe``: the same as the ``accelframe`` command."""

import sys

from accelframe.cli import main

sys.exit(main())
