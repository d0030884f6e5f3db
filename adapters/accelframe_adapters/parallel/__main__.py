"""``torchrun --nproc-per-node N -m accelframe_adapters.parallel``: the pipeline-parallel launcher."""

import sys

from accelframe_adapters.parallel.launch import main

if __name__ == "__main__":
    sys.exit(main())
