"""Entry point of `python -m trainers`."""

import os
import sys

# OpenMP threads that wait for work sleep instead of spinning (set before torch loads its OpenMP runtime,
# which reads this once). On a shared CPU a spinning thread takes the core its partner needs to finish the
# same parallel region: 2 threads ran a sar-baseline step in 6.6-9.1 s spinning and 0.4-0.8 s sleeping on
# this project's 2-core machine under other jobs' load (BENCHMARKS.md, "CPU bf16"). An explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from trainers.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
