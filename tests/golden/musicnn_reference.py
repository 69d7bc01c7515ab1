"""Run musicnn's original TensorFlow tagger on every audio file of a folder; write activations as JSON.

Runs inside the throwaway environment that ``musicnn_reference.sh`` builds, not the project's: it imports
TensorFlow and musicnn's own ``extractor``. Per clip it stores the taggram (one row of 50 sigmoid activations
per 3 s patch, as musicnn computes it) and its mean over patches, which is what ``hitmusic tags`` reports.
"""

import json
import platform
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
from musicnn.extractor import extractor


def main(folder: str, out: str) -> None:
    clips = {}
    for path in sorted(Path(folder).glob("*.mp3")):
        taggram, labels = extractor(str(path), model="MTT_musicnn", extract_features=False)
        clips[path.name] = {
            "patches": int(taggram.shape[0]),
            "mean": [round(float(v), 7) for v in taggram.mean(axis=0)],
            "taggram": [[round(float(v), 7) for v in row] for row in taggram],
        }
    made_with = {name: version(name) for name in ("tensorflow-cpu", "numpy", "librosa", "soundfile", "musicnn")}
    made_with["python"] = platform.python_version()
    doc = {
        "model": "MTT_musicnn",
        "how": "tests/golden/musicnn_reference.sh: musicnn.extractor.extractor(path, model='MTT_musicnn', "
               "input_length=3, input_overlap=False, extract_features=False) on ../shared/data/audio/*.mp3",
        "made_with": made_with,
        "labels": list(labels),
        "clips": clips,
    }
    Path(out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}: {len(clips)} clips, {len(labels)} tags")


if __name__ == "__main__":
    main(*sys.argv[1:3])
