"""`python -m transformer_squared ...` is `t2 ...` (what `torchrun -m transformer_squared` needs)."""

import sys

from .cli import main

sys.exit(main())
