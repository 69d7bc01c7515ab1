"""HitMusicNet (Martín-Gutiérrez et al., IEEE Access 2020, section V) in PyTorch.

- :class:`MusicAENet`: autoencoder d -> d/2 -> d/3 -> code (δ·d) with a mirrored decoder, trained on MSE.
- :class:`MusicPopNet`: MLP on the code, hidden layers α·c with α = (1, 1/2, 1/3), ReLU and dropout,
  one sigmoid output (popularity / 100) or three logits (low / medium / high).
- :class:`HitMusicNet`: encoder + MusicPopNet, what is registered and served.
"""

from __future__ import annotations

import torch
from torch import nn

INITIALISERS = {
    "glorot_uniform": nn.init.xavier_uniform_,
    "glorot_normal": nn.init.xavier_normal_,
    "he_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
    "he_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
}


def _size(x: float) -> int:
    return max(1, int(round(x)))


def ae_sizes(d: int, delta: float) -> tuple[int, int, int, int]:
    """Layer widths of MusicAENet's encoder: ``(d, d/2, d/3, δ·d)``."""
    return d, _size(d / 2), _size(d / 3), _size(delta * d)


def popnet_sizes(c: int, alphas: tuple[float, ...] = (1, 1 / 2, 1 / 3)) -> tuple[int, ...]:
    """Hidden widths of MusicPopNet on a code of size ``c``."""
    return tuple(_size(a * c) for a in alphas)


def initialise(module: nn.Module, scheme: str) -> None:
    """Apply a named weight initialiser (Glorot/He, uniform/normal) to every Linear layer; zero biases."""
    if scheme not in INITIALISERS:
        raise ValueError(f"unknown initialiser {scheme!r}; choose from {sorted(INITIALISERS)}")
    for m in module.modules():
        if isinstance(m, nn.Linear):
            INITIALISERS[scheme](m.weight)
            nn.init.zeros_(m.bias)


class MusicAENet(nn.Module):
    """Autoencoder ``(batch, d) -> (batch, d)``; :meth:`encode` gives the code ``(batch, δ·d)``."""

    def __init__(self, d: int, delta: float = 1 / 5):
        super().__init__()
        d0, h1, h2, c = ae_sizes(d, delta)
        self.code_size = c
        self.encoder = nn.Sequential(nn.Linear(d0, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, c))
        self.decoder = nn.Sequential(nn.Linear(c, h2), nn.ReLU(), nn.Linear(h2, h1), nn.ReLU(), nn.Linear(h1, d0))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class MusicPopNet(nn.Module):
    """MLP ``(batch, c) -> (batch, n_out)``: sigmoid output for regression, logits for classes."""

    def __init__(self, c: int, dropout: float = 0.25, n_out: int = 1,
                 alphas: tuple[float, ...] = (1, 1 / 2, 1 / 3)):
        super().__init__()
        layers: list[nn.Module] = []
        width = c
        for h in popnet_sizes(c, alphas):
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, n_out))
        self.net = nn.Sequential(*layers)
        self.n_out = n_out

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        out = self.net(code)
        return torch.sigmoid(out) if self.n_out == 1 else out


class HitMusicNet(nn.Module):
    """Scaled features ``(batch, d)`` -> popularity in [0, 1] ``(batch, 1)`` through the AE's encoder."""

    def __init__(self, d: int, delta: float = 1 / 5, dropout: float = 0.25):
        super().__init__()
        self.ae = MusicAENet(d, delta)
        self.pop = MusicPopNet(self.ae.code_size, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pop(self.ae.encode(x))
