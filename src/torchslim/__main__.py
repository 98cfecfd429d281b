"""python -m torchslim"""

import sys

from torchslim.cli import main

sys.exit(main())
