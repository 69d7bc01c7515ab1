"""The networks of the Siamese family (Yu et al., ICASSP 2018, Fig. 1; the simple CNN of Yang et al. 2017).

Our reading of the figure, since neither paper lists every size:

- **audio CNN** on a log-mel segment ``(n_mels, n_frames)``, the mel bands as input channels: two
  convolutional layers along time (kernel 3, ``channels`` filters, batch normalisation, ReLU, max-pooling by
  4), then three fully-convolutional layers (1 x 1 convolutions: ``fc`` -> ``fc`` -> 1, ReLU and dropout
  between), averaged over the remaining frames into one logit. Fully convolutional, so a segment of any
  length scores.
- **tag branch** (eq. 4): the ``n_tags`` tag activations through a 100-100-30 ReLU DNN and a linear unit.
- **score**: ``sigmoid((1 - mu) * audio + mu * tags)`` (``sigmoid(audio)`` without tags), the hit score in
  (0, 1) that popularity / 100 is regressed on.

Inputs are standardised inside the network with per-band means and deviations of the training segments
(buffers, saved with the weights), so a bundle needs nothing else to score raw dB segments.
"""

from __future__ import annotations

import torch
from torch import nn

ARCH_VERSION = 1


class AudioCNN(nn.Module):
    def __init__(self, n_mels: int = 128, channels: int = 32, fc: int = 64, dropout: float = 0.1):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_mels, 1))
        self.register_buffer("std", torch.ones(n_mels, 1))
        self.conv = nn.Sequential(
            nn.Conv1d(n_mels, channels, 3, padding="same"), nn.BatchNorm1d(channels), nn.ReLU(), nn.MaxPool1d(4),
            nn.Conv1d(channels, channels, 3, padding="same"), nn.BatchNorm1d(channels), nn.ReLU(), nn.MaxPool1d(4))
        self.fcn = nn.Sequential(
            nn.Conv1d(channels, fc, 1), nn.ReLU(), nn.Dropout(dropout),
            nn.Conv1d(fc, fc, 1), nn.ReLU(), nn.Dropout(dropout),
            nn.Conv1d(fc, 1, 1))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """``(n, n_mels, n_frames)`` dB -> ``(n,)`` logits."""
        x = (mel - self.mean) / self.std
        return self.fcn(self.conv(x)).mean(dim=(1, 2))


class TagDNN(nn.Module):
    def __init__(self, n_tags: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_tags, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(),
                                 nn.Linear(100, 30), nn.ReLU(), nn.Linear(30, 1))

    def forward(self, tags: torch.Tensor) -> torch.Tensor:
        return self.net(tags)[:, 0]


class SiameseNet(nn.Module):
    """One scoring network; a Siamese pair is this network applied to both songs."""

    def __init__(self, n_mels: int = 128, channels: int = 32, fc: int = 64, dropout: float = 0.1, n_tags: int = 0,
                 mu: float = 0.0):
        super().__init__()
        self.audio = AudioCNN(n_mels, channels, fc, dropout)
        self.tags = TagDNN(n_tags) if n_tags and mu > 0 else None
        self.mu = float(mu)

    def forward(self, mel: torch.Tensor, tags: torch.Tensor | None = None) -> torch.Tensor:
        """Hit scores ``(n,)`` in (0, 1) of segments ``(n, n_mels, n_frames)`` and tags ``(n, n_tags)``."""
        logit = self.audio(mel)
        if self.tags is not None:
            logit = (1.0 - self.mu) * logit + self.mu * self.tags(tags)
        return torch.sigmoid(logit)
