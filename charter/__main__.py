"""``python -m charter``: the same as the ``charter`` command."""

import sys

from .cli import main

sys.exit(main())
