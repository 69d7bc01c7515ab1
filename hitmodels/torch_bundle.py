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


def dense_steps(module: torch.nn.Module, inp: str, name: str, arrays: dict) -> tuple[list[tuple[str, ...]], str]:
    """A feed-forward torch module (``Sequential`` of ``Linear``, ``ReLU``, ``Sigmoid``, ``Dropout``,
    ``Flatten``, or a module with ``mean``/``std`` buffers that standardises) as
    :class:`hitmodels.kernels.Program` steps from the value ``inp``, its weights added to ``arrays`` as
    float32 under ``name``; returns the steps and the name of their output. Dropout is the identity when
    scoring; ``Flatten`` leaves a column that :meth:`Program.run` reads either way."""
    steps: list[tuple[str, ...]] = []
    layers = list(module) if isinstance(module, torch.nn.Sequential) else [module]
    for i, layer in enumerate(layers):
        out = f"{name}.{i}"
        if isinstance(layer, torch.nn.Linear):
            arrays[f"{out}.W"] = layer.weight.detach().float().numpy().T.copy()
            arrays[f"{out}.b"] = layer.bias.detach().float().numpy().copy()
            steps.append(("affine", out, inp, f"{out}.W", f"{out}.b"))
        elif isinstance(layer, torch.nn.ReLU):
            steps.append(("relu", out, inp))
        elif isinstance(layer, torch.nn.Sigmoid):
            steps.append(("sigmoid", out, inp))
        elif isinstance(layer, (torch.nn.Dropout, torch.nn.Flatten)):
            continue
        elif isinstance(getattr(layer, "mean", None), torch.Tensor) and isinstance(getattr(layer, "std", None),
                                                                                  torch.Tensor):
            arrays[f"{out}.mean"] = layer.mean.detach().float().numpy().copy()
            arrays[f"{out}.std"] = layer.std.detach().float().numpy().copy()
            steps.append(("standardise", out, inp, f"{out}.mean", f"{out}.std"))
        else:
            raise ValueError(f"no kernel step for a {type(layer).__name__} layer")
        inp = out
    return steps, inp
