"""Runs on disk: the SQLite run store (`store`, built from `database`: schema and connection policy,
`records`: runs, `series`: metric rows), checkpoints (`checkpoints`) and the atomic file primitives they use
(`atomic`), logged media (`media`), metric exports (`export`), the Ray result sink (`ray_sink`) and the
fault-injection points of tests and the fault campaign (`faults`)."""
