"""Entry point of the Autoencoder Comparison Studio (and the Hugging Face Space's app_file).

python app.py [--host 127.0.0.1] [--port 7860] [--runs-dir runs] [--cpu-slots N]
"""

from studio.app import main

if __name__ == "__main__":
    raise SystemExit(main())
