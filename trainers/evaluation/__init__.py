"""Evaluation: the ``compare`` leaderboard, the classic codecs beside it and the models' real bitstreams."""
