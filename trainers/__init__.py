"""Data, training loop, metrics, run store and the `python -m trainers` CLI."""

import os

# OpenMP threads that wait for work sleep instead of spinning. Set when the package loads, before torch
# loads its OpenMP runtime (which reads it once), so every entry point gets it: `python -m trainers`,
# `ae-train`, the studio (`app.py`, `ae-studio`), scripts and the test suite's in-process trainings. On a
# shared CPU a spinning thread takes the core its partner needs to finish the same parallel region: 2
# threads ran a sar-baseline step in 6.6-9.1 s spinning and 0.4-0.8 s sleeping on this project's 2-core
# machine under other jobs' load (BENCHMARKS.md, "CPU bf16"); a reference training went from 1.1 to
# 0.11 s a step. An explicit setting wins; a process that loaded torch first keeps what it had.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
