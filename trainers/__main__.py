"""Entry point of `python -m trainers`."""

import sys

from trainers.cli import main

if __name__ == "__main__":
    sys.exit(main())
