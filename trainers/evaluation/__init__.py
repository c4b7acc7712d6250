"""Evaluation: the `compare` leaderboard (models, trivial baselines and classical codecs on one data set),
the codec wrappers it matches and sweeps (`codecs`) and the models' real bitstreams (`bitstream`)."""
