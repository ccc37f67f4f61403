"""`python -m factory.cli ...` runs the `factory` command."""
import sys

from factory.cli import main

sys.exit(main())
