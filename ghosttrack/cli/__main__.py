"""`python -m ghosttrack.cli` (what `accelerate launch -m` and `torchrun -m` run)."""
import sys

from ghosttrack.cli import main

sys.exit(main())
