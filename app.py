"""Entry point of the Autoencoder Comparison Studio (and the Hugging Face Space's app_file).

python app.py [--host 127.0.0.1] [--port 7860] [--runs-dir runs] [--cpu-slots N]

The installed package runs the same studio as ``ae-studio``. On a Space with persistent storage, runs go to
``/data/runs`` (unless ``STUDIO_RUNS_DIR`` says otherwise), so they survive restarts.
"""

from studio.app import main

if __name__ == "__main__":
    raise SystemExit(main())
