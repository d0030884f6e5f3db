"""``torchrun --nproc-per-node N -m accelframe_adapters.parallel DESCRIPTION OUT``: streams on the
ring from a JSON description (:mod:`accelframe_adapters.parallel.trial`)."""

import sys

from accelframe_adapters.parallel.trial import main

if __name__ == "__main__":
    sys.exit(main())
