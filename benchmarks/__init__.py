"""What training and the studio cost: `python benchmarks/run.py [--quick]`, results in BENCHMARKS.md."""
