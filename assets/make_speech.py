"""Make the shipped speech clips in ``assets/speech/`` (train/ and test/) with Debian's espeak-ng and sox.

The studio has no real recordings it may ship, so these stand in for "a folder of the user's recordings":
real speech synthesis (formants, pitch contours, silences between words), at the rates, channel counts and
lengths that user files have (16 / 22.05 / 44.1 kHz, mono and stereo, 0.6 s to 4 s), stored as FLAC. They
train the audio reference checkpoints and are the held-out set of the README's audio leaderboard. Re-running
this script rewrites the same files (espeak-ng and sox are deterministic for fixed arguments).

    apt-get install espeak-ng sox && python assets/make_speech.py
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

OUT = Path(__file__).resolve().parent / "speech"

SENTENCES = [
    "The radar looked at the fields after the rain.",
    "Seven ships waited outside the harbour at dawn.",
    "Please open the window before the meeting starts.",
    "A quiet river runs under the old stone bridge.",
    "Numbers never lie, but their units sometimes do.",
    "She measured the signal twice and wrote it down.",
    "The train to the north leaves at half past nine.",
    "Bright corners reflect the wave straight back.",
    "Listen to the sound of the wind in the trees.",
    "Every fragment of the file was read again.",
    "We compared four models on the same images.",
    "Yes.",
    "Good morning, how can I help you today?",
    "The forest is dark and the road is wet.",
    "Turn left at the second crossing, then stop.",
    "Coffee, tea, or a glass of cold water?",
    "The satellite passes over us twice a day.",
    "Hello there.",
    "Speckle makes every pixel a little uncertain.",
    "Three, two, one, and the test begins now.",
    "Her voice carried across the empty hall.",
    "Small errors add up over a long journey.",
    "The archive holds letters from many years.",
    "Wait.",
]
VOICES = ["en", "en-us", "en-gb-scotland", "en+f3", "en-us+f2", "en+m3", "en-029", "en+f4"]
RATES = [16000, 22050, 44100]


def main() -> None:
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed: apt-get install espeak-ng sox")
    for split in ("train", "test"):
        shutil.rmtree(OUT / split, ignore_errors=True)
        (OUT / split).mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        for k, text in enumerate(SENTENCES):
            split = "test" if k % 4 == 3 else "train"
            voice = VOICES[k % len(VOICES)]
            speed = 140 + 15 * (k % 5)
            raw = Path(tmp) / f"{k}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text], check=True)
            rate = RATES[k % len(RATES)]
            channels = 2 if k % 3 == 0 else 1
            gain = -6 - 3 * (k % 4)  # from -6 dBFS to quiet -15 dBFS peaks
            out = OUT / split / f"speech_{k:02d}_{rate // 1000}k_{'stereo' if channels == 2 else 'mono'}.flac"
            subprocess.run(
                [
                    "sox",
                    str(raw),
                    "-r",
                    str(rate),
                    "-c",
                    str(channels),
                    "-b",
                    "16",
                    str(out),
                    "norm",
                    str(gain),
                ],
                check=True,
            )


if __name__ == "__main__":
    main()
