"""Runs on disk: the SQLite run store (`store`), checkpoints (`checkpoints`) and the atomic file primitives
they
use (`atomic`), logged media (`media`), metric exports (`export`) and the Ray result sink (`ray_sink`)."""
