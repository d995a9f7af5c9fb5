"""``python -m retinaedge.cli`` (used by ``torchrun -m retinaedge.cli train ...``)."""

import sys

from retinaedge.cli import main

sys.exit(main())
