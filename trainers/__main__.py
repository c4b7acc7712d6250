"""Entry point of `python -m trainers`."""

import sys

# Importing trainers makes OpenMP threads wait passively (trainers/__init__.py).
from trainers.cli import main

if __name__ == "__main__":
    sys.exit(main())
