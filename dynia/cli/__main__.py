"""`python -m dynia.cli` runs the CLI (used by tests and when no console script is installed)."""

from dynia.cli.main import main

main()
