"""The bundle of a torch family, as data: ``weights.pt`` (a state dict, read with ``weights_only``: tensors,
never pickled objects), ``arch.json`` (the family's meta dataclass: architecture, calibration and
configuration; its ``build()`` makes the network) and ``preprocess.json`` (the
:class:`~hitmodels.predict.Preprocessor`)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from .predict import Preprocessor

FILES = ("weights.pt", "arch.json", "preprocess.json")


def save(directory: Path, network: torch.nn.Module, pre: Preprocessor, meta) -> list[str]:
    """Write the three files into ``directory``; returns their names."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), directory / "weights.pt")
    (directory / "arch.json").write_text(json.dumps(asdict(meta)))
    (directory / "preprocess.json").write_text(pre.to_json())
    return list(FILES)


def load(directory: Path, meta_cls, arch_version: int, what: str = "model"):
    """``(network, preprocessor, meta)`` from what :func:`save` wrote; a bundle of another architecture
    version is refused (``what`` names it in the message)."""
    directory = Path(directory)
    raw = json.loads((directory / "arch.json").read_text())
    if raw.get("arch_version") != arch_version:
        raise ValueError(f"{what} saved with architecture version {raw.get('arch_version', 1)}, this code reads "
                         f"version {arch_version}: retrain it with this version")
    meta = meta_cls(**raw)
    network = meta.build()
    network.load_state_dict(torch.load(directory / "weights.pt", map_location="cpu", weights_only=True))
    network.eval()
    return network, Preprocessor.from_json((directory / "preprocess.json").read_text()), meta
