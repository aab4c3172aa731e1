"""`python -m dynia.cli` runs the CLI (used by tests and when no console script is installed)."""

import sys

from dynia.cli.main import main

sys.exit(main())
