"""The Gradio studio: the app, the job manager and its backends, and the views."""

import trainers  # noqa: F401  (its import makes OpenMP threads wait passively before torch loads: see there)
