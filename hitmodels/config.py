"""All tunable settings of the system, in one typed place.

Every stage takes its settings from one of these dataclasses; the CLI builds them from flags and environment
variables (``HITMUSIC_HOME``, ``MLFLOW_TRACKING_URI``, ``RAY_ADDRESS``), so nothing else hard-codes a path,
a port or a numerical constant.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# Schema version of the feature table; bump when a column's meaning changes so registered models record
# which features they were trained on.
FEATURE_SCHEMA_VERSION = "1"

# Popularity classes of HitMusicNet eq. (4): below 25 is low, 25 to below 65 medium, 65 and above high.
CLASS_NAMES = ("low", "medium", "high")
CLASS_THRESHOLDS = (25.0, 65.0)


def default_home() -> Path:
    """Project data directory: generated catalogues, the MLflow store, Ray results, service logs."""
    return Path(os.environ.get("HITMUSIC_HOME", Path.cwd() / ".hitmusic")).resolve()


@dataclass(frozen=True)
class FeatureConfig:
    """Frame-level audio analysis settings (HitMusicNet section IV).

    ``sr=None`` keeps each preview's native rate (44,100 Hz for Spotify previews). Mel: 128 bands, FFT 2048,
    Hamming window, ``fmin`` 50 Hz to sr/2; hop 512 samples.
    """

    sr: int | None = None
    n_fft: int = 2048
    hop_length: int = 512
    window: str = "hamming"
    n_mels: int = 128
    fmin: float = 50.0
    n_mfcc: int = 48
    rolloff_percent: float = 0.85
    energy_entropy_blocks: int = 10
    min_duration_s: float = 1.0
    silence_rms: float = 1e-4


@dataclass(frozen=True)
class SynthConfig:
    """The generated sample catalogue (see :mod:`hitmodels.synth`)."""

    n_tracks: int = 200
    tracks_per_artist: int = 4
    duration_s: float = 30.0
    sr: int = 22050
    seed: int = 7
    audio_format: str = "wav"


@dataclass(frozen=True)
class TrainConfig:
    """HitMusicNet training (MusicAENet then MusicPopNet), defaults of the paper's model 1 (δ = 1/5)."""

    delta: float = 1 / 5
    dropout: float = 0.25
    batch_size: int = 256
    ae_epochs: int = 100
    mlp_epochs: int = 100
    patience: int = 10
    lr: float = 1e-3
    optimizer: str = "adam"
    test_size: float = 0.2
    val_size: float = 0.2
    seed: int = 42
    model_name: str = "hitmusicnet"
    experiment: str = "hitmusicnet"


@dataclass(frozen=True)
class ServiceConfig:
    """Where the long-running services live. Everything binds to loopback unless told otherwise."""

    home: Path = field(default_factory=default_home)
    host: str = "127.0.0.1"
    mlflow_port: int = 5000
    serve_port: int = 8000
    ray_dashboard_port: int = 8265

    @property
    def tracking_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI", f"http://{self.host}:{self.mlflow_port}")


    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def run_dir(self) -> Path:
        """pid files and logs of the services started by ``hitmusic up``."""
        return self.home / "run"

    @property
    def serve_url(self) -> str:
        return f"http://{self.host}:{self.serve_port}"


def tracking_uri(explicit: str | None = None) -> str:
    """The MLflow server to talk to: ``explicit``, else ``$MLFLOW_TRACKING_URI``, else the local server that
    ``hitmusic up`` starts. Never MLflow's own default (a ./mlruns folder), which a Ray worker or a
    ``ray job submit`` driver would silently create somewhere else."""
    return explicit or ServiceConfig().tracking_uri
