"""``python -m vidcls`` (and ``torchrun -m vidcls``) is the ``vidcls`` command."""

import sys

from .cli import main

sys.exit(main())
