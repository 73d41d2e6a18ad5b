"""`python -m lighthouse.bench ...` (see lighthouse/bench/__init__.py)."""

import sys

from . import main

sys.exit(main())
