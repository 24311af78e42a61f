# `python -m worldtune ...` (what `torchrun -m worldtune train ...` runs)
import sys

from worldtune.cli import main

sys.exit(main())
