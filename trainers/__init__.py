"""Data, training loop, metrics, run store and the `python -m trainers` CLI."""
