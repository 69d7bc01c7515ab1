"""Tag audio files with the pretrained 50-tag MagnaTagATune tagger: a quick look at what the models see.

    hitmusic tags FILE... [--top 5] [--json]          # or: python -m pipelines.tags FILE...

The tagger is musicnn's MTT_musicnn (Pons & Serra, ISMIR 2019 LBD; ISC licence, Music Technology Group,
Universitat Pompeu Fabra), trained on MagnaTagATune's 50 most frequent tags, run in PyTorch with the weights of
the ``musicnn`` wheel (:mod:`hitmodels.tagger`). It replaces JYnet, the tagger of Yu et al.'s tag branch,
which was never published. Each file is decoded, resampled to 16 kHz, cut into 3 s patches; a tag's value is
its sigmoid activation averaged over the patches (0 to 1; not calibrated probabilities: MagnaTagATune's
tags are sparse, and 0.3 is a strong tag).

Local files only, each under the input bounds of ``hitmusic extract`` (bytes, duration). A file that cannot
be tagged is reported with its reason and the others are still tagged; the exit status is 1 if any failed.
``--json`` prints one object per file: ``{"file", "error", "tags": {label: activation}, "top": [label, ...]}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hitmodels import audio
from hitmodels.config import FeatureConfig, InputPolicy
from hitmodels.entry import module_main


def tag_files(files: list[Path], top: int = 5, device: str = "auto") -> list[dict]:
    """One result per file, in order: ``{"file", "error", "tags", "top"}``; ``error`` is None when tagged."""
    from hitmodels import tagger  # torch: imported by this command, not by every hitmusic command
    from hitmodels.devices import resolve_device

    t = tagger.shared(str(resolve_device(device)))
    resolved = [Path(f).resolve() for f in files]
    policy = InputPolicy(local_roots=tuple(dict.fromkeys(str(f.parent) for f in resolved)))
    cfg = FeatureConfig(sr=t.spec.sr)
    out = []
    for f, path in zip(files, resolved):
        result = {"file": str(f), "error": None, "tags": None, "top": None}  # named as the user named it
        try:
            y, sr = audio.load(str(path), cfg, policy)
            acts = t.tag(y, sr)
            order = sorted(range(len(acts)), key=lambda i: -acts[i])
            result["tags"] = {t.labels[i]: round(float(acts[i]), 4) for i in range(len(acts))}
            result["top"] = [t.labels[i] for i in order[:top]]
        except audio.AudioError as exc:
            result["error"] = str(exc)
        out.append(result)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", type=Path, nargs="+", metavar="FILE", help="audio files (MP3, WAV, FLAC, OGG)")
    p.add_argument("--top", type=int, default=5, help="tags to list per file (default 5; --json lists all 50)")
    p.add_argument("--json", action="store_true", help="print JSON, one object per file, instead of text")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where the network runs (default auto: the GPU when torch sees one)")


def main_from_args(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise ValueError("--top must be at least 1")
    results = tag_files(args.files, args.top, args.device)
    for r in results:
        if args.json:
            print(json.dumps(r))
        elif r["error"]:
            print(f"{r['file']}: error: {r['error']}")
        else:
            print(f"{r['file']}: " + ", ".join(f"{label} {r['tags'][label]:.2f}" for label in r["top"]))
    return 1 if any(r["error"] for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    return module_main(__doc__, "python -m pipelines.tags", add_arguments, main_from_args, argv)


if __name__ == "__main__":
    sys.exit(main())
