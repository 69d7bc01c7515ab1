"""HitMusicNet (Martín-Gutiérrez et al., IEEE Access 2020, section V) in PyTorch.

- :class:`MusicAENet`: autoencoder d -> d/2 -> d/3 -> code (δ·d) with a mirrored decoder, trained on MSE.
- :class:`MusicPopNet`: MLP on the code, hidden layers α·c with α = (1, 1/2, 1/3), ReLU and dropout,
  one sigmoid output (popularity / 100) or three logits (low / medium / high).
- :class:`HitMusicNet`: encoder + MusicPopNet (+ the 3-class MusicPopNet), what is registered and served.

Details the paper's text leaves open follow the authors' published Keras code (the code min-max scaled again
before MusicPopNet, no dropout after MusicPopNet's last hidden layer) with one exception: their autoencoder
has a ReLU code and a sigmoid reconstruction, ours a linear code and a linear reconstruction (ReLU on the
hidden layers), which learnt better here: test MAE / MAE of predicting the mean 0.75 vs. 0.85 on the
200-track demo table and 0.552 vs. 0.564 on a generated 6,000-row table (4 seeds each); the ReLU code also
left some code units dead.
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

# Bumped when a change makes older saved weights load into a different function.
ARCH_VERSION = 2
N_CLASSES = 3


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
                 alphas: tuple[float, ...] = (1, 1 / 2, 1 / 3), min_width: int = 1, linear_out: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        width = c
        sizes = tuple(max(min_width, h) for h in popnet_sizes(c, alphas))
        for i, h in enumerate(sizes):
            layers += [nn.Linear(width, h), nn.ReLU()]
            if i < len(sizes) - 1:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, n_out))
        self.net = nn.Sequential(*layers)
        self.n_out = n_out
        self.linear_out = linear_out  # regression without the sigmoid (the small-table variant)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        out = self.net(code)
        return torch.sigmoid(out) if self.n_out == 1 and not self.linear_out else out


class HitMusicNet(nn.Module):
    """Scaled features ``(batch, d)`` -> popularity in [0, 1] ``(batch, 1)`` through the AE's encoder.

    ``classifier=True`` adds a second MusicPopNet with three logits on the same code
    (:meth:`class_logits`). The code's min-max scaling (fitted on training codes) lives in buffers, so it
    travels with the weights.
    """

    def __init__(self, d: int, delta: float = 1 / 5, dropout: float = 0.25,
                 alphas: tuple[float, ...] = (1, 1 / 2, 1 / 3), classifier: bool = False,
                 standardise: bool = False, skip_linear: bool = False, min_width: int = 1):
        super().__init__()
        self.ae = MusicAENet(d, delta)
        c = self.ae.code_size
        if standardise:  # z-scoring of the (min-max scaled) inputs, fitted on training rows
            self.register_buffer("in_mean", torch.zeros(d))
            self.register_buffer("in_std", torch.ones(d))
        self.standardised = standardise
        self.register_buffer("code_lo", torch.zeros(c))
        self.register_buffer("code_span", torch.ones(c))
        self.pop = MusicPopNet(c, dropout, 1, tuple(alphas), min_width, linear_out=skip_linear)
        # the small-table variant's linear path from the inputs to popularity, beside MusicPopNet
        self.skip = nn.Linear(d, 1) if skip_linear else None
        self.cls = MusicPopNet(c, dropout, N_CLASSES, tuple(alphas), min_width) if classifier else None

    def fit_input_scaling(self, x: torch.Tensor) -> None:
        """Standardise the inputs with these (training) rows' mean and standard deviation (no-op without
        ``standardise``); constant columns keep scale 1."""
        if self.standardised:
            with torch.no_grad():
                std = x.std(0)
                self.in_mean.copy_(x.mean(0))
                self.in_std.copy_(torch.where(std > 0, std, torch.ones_like(std)))

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder (and the linear path) read: ``x`` itself, or standardised."""
        return (x - self.in_mean) / self.in_std if self.standardised else x

    def fit_code_scaling(self, x: torch.Tensor) -> None:
        """Min-max scale the code to [0, 1] on these (training) rows; dead code units keep span 1."""
        with torch.no_grad():
            code = self.ae.encode(self.inputs(x))
            lo, hi = code.min(0).values, code.max(0).values
            self.code_lo.copy_(lo)
            self.code_span.copy_(torch.where(hi > lo, hi - lo, torch.ones_like(hi)))

    def code(self, x: torch.Tensor) -> torch.Tensor:
        return (self.ae.encode(self.inputs(x)) - self.code_lo) / self.code_span

    def head(self, code: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Popularity / 100 from the code (and, with the linear path, the inputs it was computed from)."""
        out = self.pop(code)
        return out + self.skip(self.inputs(x)) if self.skip is not None else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.code(x), x)

    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.cls is None:
            raise ValueError("this HitMusicNet was built without the 3-class MusicPopNet")
        return self.cls(self.code(x))
