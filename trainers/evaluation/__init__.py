"""Evaluation: the `compare` leaderboard (models, trivial baselines and classical codecs on one data set) and
the
codec wrappers it sweeps (`codecs`)."""
