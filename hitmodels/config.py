"""All tunable settings of the system, in one typed place.

Every stage takes its settings from one of these dataclasses; the CLI builds them from flags and environment
variables (``HITMUSIC_HOME``, ``MLFLOW_TRACKING_URI``, ``RAY_ADDRESS``), so nothing else hard-codes a path,
a port or a numerical constant.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

# Schema version of the feature table; bump when a column's meaning changes so registered models record
# which features they were trained on.
FEATURE_SCHEMA_VERSION = "3"  # 3: audio analysed at a fixed 22,050 Hz

# Popularity classes of HitMusicNet eq. (4): below 25 is low, 25 to below 65 medium, 65 and above high.
CLASS_NAMES = ("low", "medium", "high")
CLASS_THRESHOLDS = (25.0, 65.0)


def default_home() -> Path:
    """Project data directory: generated catalogues, the MLflow store, Ray results, service logs."""
    return Path(os.environ.get("HITMUSIC_HOME", Path.cwd() / ".hitmusic")).resolve()


@dataclass(frozen=True)
class FeatureConfig:
    """Frame-level audio analysis settings (HitMusicNet section IV).

    Audio is analysed at one fixed rate, ``sr`` (22,050 Hz: every file is resampled to it when decoded), so that
    ``MEL_k``, the spectral statistics and the frame hop mean the same frequencies and durations for a 22.05 kHz
    generated clip, a 44.1 kHz preview and a 48 kHz upload; ``sr=None`` keeps each file's native rate (features
    of files at different rates are then not comparable). Mel: 128 bands, FFT 2048, Hamming window, ``fmin``
    50 Hz to sr/2; hop 512 samples.
    """

    sr: int | None = 22050
    n_fft: int = 2048
    hop_length: int = 512
    window: str = "hamming"
    n_mels: int = 128
    fmin: float = 50.0
    n_mfcc: int = 48
    rolloff_percent: float = 0.85
    energy_entropy_blocks: int = 10
    # Chroma from a constant-Q transform from C1, 7 octaves at 3 bins per semitone, and tonnetz from that
    # chroma: librosa.feature.chroma_cqt's defaults, which the paper used.
    n_chroma: int = 12
    chroma_bins_per_octave: int = 36
    chroma_n_octaves: int = 7
    # Spectral contrast: librosa's defaults (6 octave bands from 200 Hz, plus the rest up to Nyquist)
    contrast_fmin: float = 200.0
    contrast_n_bands: int = 6
    min_duration_s: float = 1.0
    silence_rms: float = 1e-4
    # The 50 MagnaTagATune tag activations of the pretrained tagger (hitmodels.tagger: musicnn's MTT_musicnn),
    # as tag_<label> columns, from the clip resampled to the tagger's 16 kHz. Off by default: the network
    # costs several times the rest of the extraction per clip (benchmarks/bench_tagger.py).
    tags: bool = False

    @classmethod
    def from_dict(cls, d: dict | None) -> "FeatureConfig":
        """The settings a table or bundle recorded (``None``: this version's defaults); unknown keys are an error,
        since features extracted with settings this code does not know would not be reproduced."""
        if not d:
            return cls()
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown feature settings {unknown}")
        return cls(**d)


@dataclass(frozen=True)
class MelConfig:
    """Log-mel segments for the CNN families (Yu et al. 2018, section 2.5): 128 mel bands (librosa's Slaney
    filters, ``fmin`` to sr/2) of the power spectrum at 22,050 Hz, Hamming window of 4,096 samples with half
    overlap (hop 2,048), in dB (``10 log10(max(power, 1e-10))``), over a ``segment_s`` segment: 323 frames for
    30 s. ``highlight``: how HL-30 is chosen (``"energy"``: the window of greatest mean power; see
    :func:`hitmodels.mel.highlight_start`)."""

    sr: int = 22050
    n_fft: int = 4096
    hop_length: int = 2048
    window: str = "hamming"
    n_mels: int = 128
    fmin: float = 0.0
    segment_s: float = 30.0
    highlight: str = "energy"
    min_duration_s: float = 1.0
    silence_rms: float = 1e-4

    @property
    def n_frames(self) -> int:
        """Frames in one segment (centred frames, as librosa's ``center=True``)."""
        return 1 + int(round(self.segment_s * self.sr)) // self.hop_length

    @classmethod
    def from_dict(cls, d: dict | None) -> "MelConfig":
        if not d:
            return cls()
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown mel settings {unknown}")
        return cls(**d)


def _env_list(name: str, sep: str = ",") -> tuple[str, ...]:
    return tuple(v.strip() for v in os.environ.get(name, "").split(sep) if v.strip())


@dataclass(frozen=True)
class InputPolicy:
    """What a job or the service may read on behalf of a manifest row or a request, and how much of it.

    Everything a row names is untrusted: an audio URI is read only if it lies under ``local_roots``
    (symlinks and ``..`` resolved first), in one of ``s3_buckets``, or on one of ``http_hosts``
    (``host`` or ``host:port``; none by default), and HTTP never reaches loopback, link-local or private
    addresses unless ``allow_private_http``. Redirects are followed only on the same host. A refused URI is
    that row's error (``uri_not_allowed: ...``), never the job's.

    Bounds, each a per-row error (``too_large``, ``too_long``, ``lyrics_too_long``) or a 4xx: bytes read per
    audio file (cut while streaming), decoded duration (longer audio is refused, not truncated, so features
    never silently describe part of a track), lyric characters and lines.

    :meth:`for_manifest` gives a job's default; ``HITMUSIC_ALLOWED_ROOTS`` (``:``-separated),
    ``HITMUSIC_ALLOWED_S3_BUCKETS``, ``HITMUSIC_ALLOWED_HTTP_HOSTS`` (comma-separated) and
    ``HITMUSIC_ALLOW_PRIVATE_HTTP=1`` widen it for every job; the CLI's ``--allow-*`` flags for one.
    """

    local_roots: tuple[str, ...] = ()
    s3_buckets: tuple[str, ...] = ()
    http_hosts: tuple[str, ...] = ()
    allow_private_http: bool = False
    max_redirects: int = 3
    fetch_timeout_s: float = 30.0  # per connect or read
    fetch_total_s: float = 120.0  # one whole HTTP download, redirects included
    # A 30 s preview is ~0.5 MB (MP3) to 5 MB (WAV); a 15-minute 320 kbit/s MP3 is 36 MB.
    max_audio_bytes: int = 64 * 2**20
    # Full-length tracks (up to 15 minutes) are in scope for segment models; decoding mixes to mono block by
    # block, so 15 minutes at 44.1 kHz holds 159 MB of float32 (at most 691 MB at 192 kHz, audio.decode).
    max_duration_s: float = 900.0
    # Lyrics of real songs run to a few thousand characters and a hundred lines; the bound keeps a
    # pathological text (20,000 one-letter lines) from costing seconds and gigabytes.
    max_lyric_chars: int = 100_000
    max_lyric_lines: int = 5_000

    @classmethod
    def default(cls, extra_roots: tuple[str | Path, ...] = (), cwd: bool = False, **overrides) -> "InputPolicy":
        """``$HITMUSIC_HOME``, ``extra_roots`` (and the current directory with ``cwd=True``), plus what
        the environment allows: the policy of a library call that names no manifest."""
        # resolved here, where they were given: a job checks them in Ray workers, in another directory
        roots = (str(default_home()), *([str(Path.cwd())] if cwd else []),
                 *(str(Path(r).resolve()) for r in (*extra_roots, *_env_list("HITMUSIC_ALLOWED_ROOTS", os.pathsep))))
        fields = dict(local_roots=tuple(dict.fromkeys(roots)), s3_buckets=_env_list("HITMUSIC_ALLOWED_S3_BUCKETS"),
                      http_hosts=_env_list("HITMUSIC_ALLOWED_HTTP_HOSTS"),
                      allow_private_http=os.environ.get("HITMUSIC_ALLOW_PRIVATE_HTTP", "") == "1")
        return cls(**{**fields, **overrides})

    @classmethod
    def for_manifest(cls, manifest: str | Path, roots: tuple[str, ...] = (), buckets: tuple[str, ...] = (),
                     hosts: tuple[str, ...] = (), **overrides) -> "InputPolicy":
        """A job's policy: the manifest's own directory (or its S3 bucket) and ``$HITMUSIC_HOME``, the
        environment's additions and the ``roots``/``buckets``/``hosts`` given (the CLI's ``--allow-*``)."""
        text = str(manifest)
        own_root, own_bucket = (), ()
        if text.startswith("s3://"):
            own_bucket = (text[5:].split("/", 1)[0],)
        else:
            path = Path(text).resolve()
            own_root = (str(path if path.is_dir() else path.parent),)
        base = cls.default(extra_roots=(*own_root, *roots))
        return replace(base, s3_buckets=tuple(dict.fromkeys((*base.s3_buckets, *own_bucket, *buckets))),
                       http_hosts=tuple(dict.fromkeys((*base.http_hosts, *hosts))), **overrides)


@dataclass(frozen=True)
class SynthConfig:
    """The generated sample catalogue (see :mod:`hitmodels.synth`)."""

    n_tracks: int = 200
    tracks_per_artist: int = 4
    duration_s: float = 30.0
    sr: int = 22050
    seed: int = 7
    audio_format: str = "wav"
    # Full-length tracks (``hitmusic synth --full-length``) instead of 30 s previews: each lasts a seeded
    # length in ``full_length_s`` and has a chorus of ``chorus_s`` seconds, louder and brighter than the verses,
    # played twice from a seeded position (the truth table records both starts), so that Mid-30 and HL-30
    # are different segments.
    full_length: bool = False
    full_length_s: tuple[float, float] = (120.0, 210.0)
    chorus_s: float = 30.0


@dataclass(frozen=True)
class TrainConfig:
    """HitMusicNet training (MusicAENet then MusicPopNet); see the README's "Model" section.

    Defaults are the paper's model 1 (δ = 1/5) with variant B's optimiser and initialiser (Adam, Glorot
    uniform); :func:`paper_config` gives every named configuration of the paper's Table 2.
    """

    delta: float = 1 / 5
    alphas: tuple[float, ...] = (1, 1 / 2, 1 / 3)
    dropout: float = 0.25
    batch_size: int = 256
    ae_epochs: int = 100
    mlp_epochs: int = 100
    patience: int = 10
    # MusicPopNet's optimiser and initialiser (the paper's variants A-D). lr=None: the optimiser's Keras
    # default (SGD 0.01, Adam 0.001, Nadam 0.002, Adadelta 1.0), since the paper trained with Keras defaults.
    optimizer: str = "adam"
    lr: float | None = None
    initialiser: str = "glorot_uniform"
    # MusicAENet is always trained with Adam 1e-3 on MSE (paper section V-A), whatever the variant.
    ae_optimizer: str = "adam"
    ae_lr: float = 1e-3
    # Also train the 3-class softmax MusicPopNet on the same code (its argmax is the served ``class``).
    classifier: bool = True
    # "fixed": eq. (4), low < 25 <= medium < 65 <= high; "quartiles": Q1 and Q3 of the training popularity.
    class_scheme: str = "fixed"
    # Cross-entropy class weights of the 3-class MusicPopNet: "none" or "balanced" (n / (3 · count)).
    # "none" because balanced weights cost both accuracy and macro F1 on a 6,000-row generated table
    # (fixed classes, 18/75/7 %): accuracy 0.617 vs 0.808, macro F1 0.561 vs 0.594 (HistGBM: 0.804 / 0.551).
    class_weight: str = "none"
    # Split conformal prediction interval: target coverage, calibrated on rows the model never fits.
    coverage: float = 0.8
    test_size: float = 0.2
    val_size: float = 0.2
    calib_size: float = 0.15
    # Stratification of every split and fold: this many quantile bins of popularity.
    strat_bins: int = 10
    # "stratified" (on popularity) or "artist" (no artist on both sides of any cut: test, calibration,
    # validation, CV folds)
    split: str = "stratified"
    seed: int = 42
    # Threads while fitting: torch's intra-op threads and scikit-learn's OpenMP/BLAS threads for the
    # baselines (None: the libraries' defaults, one per core). 1 because on the 2-core machine shared with
    # Ray and other jobs an autoencoder epoch took 1.4-7x longer with 2 threads than with 1 (the threads
    # wait for each other); raise it on a dedicated machine.
    threads: int | None = 1
    # Where the networks train: "auto" (CUDA when this process sees a GPU: a Tune trial granted a GPU
    # fraction, a GPU machine), "cpu" or "cuda". Scoring always runs on the CPU.
    device: str = "auto"
    # The small-table variant's switches (configuration "1-S", :func:`small_table_config`); all off in the
    # paper's configurations. standardise: inputs z-scored on the fit rows (after min-max) before the encoder;
    # skip_linear: a linear path from the inputs to popularity beside MusicPopNet, L1-penalised by skip_l1;
    # min_width: MusicPopNet's hidden layers at least this wide; end_to_end: after MusicAENet's pre-training,
    # encoder + MusicPopNet (+ skip) trained together with AdamW (weight_decay), early-stopped on validation
    # MAE (a linear regression output, clipped to 0-100 when answering, instead of the sigmoid).
    standardise: bool = False
    skip_linear: bool = False
    skip_l1: float = 0.0
    min_width: int = 1
    end_to_end: bool = False
    weight_decay: float = 0.0
    skip_init: str = "zero"  # or "lasso": the linear path starts from a Lasso fitted on the fit rows
    name: str = "custom"
    model_name: str = "hitmusicnet"
    experiment: str = "hitmusicnet"
    # The model family (a folder of hitmodels/families/) and its own settings, e.g. HistGradientBoosting's
    # {"learning_rate": 0.05}; the fields above are HitMusicNet's and the split's, which every family shares.
    family: str = "hitmusicnet"
    params: dict = field(default_factory=dict)


# The paper's Table 2: models 1-3 differ in the autoencoder's code size δ, variants A-D in MusicPopNet's
# optimiser and initialiser. A, B and C are the published ones; D (Adam + He normal) is our reading, taken
# from the authors' published code (models/model_selection.py, "model_1_D") since the paper's text does not
# spell it out.
PAPER_DELTAS = {"1": 1 / 5, "2": 1 / 4, "3": 1 / 7}
PAPER_VARIANTS = {"A": ("adadelta", "glorot_uniform"), "B": ("adam", "glorot_uniform"),
                  "C": ("adadelta", "he_normal"), "D": ("adam", "he_normal")}
PAPER_CONFIGS = tuple(f"{m}-{v}" for m in PAPER_DELTAS for v in PAPER_VARIANTS)


SMALL_TABLE_CONFIG = "1-S"
CONFIGS = PAPER_CONFIGS + (SMALL_TABLE_CONFIG,)  # every name --config accepts


def small_table_config(base: TrainConfig | None = None) -> TrainConfig:
    """Configuration ``1-S``: HitMusicNet for small and weak-signal tables (our design, not the paper's).

    The paper's model 1 (δ 1/5, MusicAENet pre-trained as in the paper) with: inputs standardised; MusicPopNet's
    hidden layers at least 16 wide (a 7-wide code otherwise gives layers of 7, 3 and 2 units); a linear path
    from the inputs beside it, started from a Lasso fitted on the fit rows (penalty by 3-fold CV) and kept
    sparse by an L1 penalty (1e-3), so that a table whose signal is mostly linear in a few columns is learnt
    at least as a Lasso learns it; encoder, MusicPopNet and the linear path fine-tuned together with AdamW
    (lr 1e-3, weight decay 1e-2), dropout 0.1, early-stopped on validation MAE (the starting point competes:
    training must beat it) with patience 40 over up to 4x ``base.mlp_epochs`` (400 by default): with
    patience 10 or 20 and no Lasso start it stopped on the first plateau and had twice the test MAE on the
    200-track demo table. Measured against the paper's configurations in README's
    "Model" section."""
    return replace(base or TrainConfig(), delta=PAPER_DELTAS["1"], optimizer="adam", lr=1e-3,
                   initialiser="glorot_uniform", dropout=0.1, standardise=True, skip_linear=True, skip_l1=1e-3,
                   skip_init="lasso", min_width=16, end_to_end=True, weight_decay=1e-2, patience=40,
                   mlp_epochs=4 * (base or TrainConfig()).mlp_epochs, name=SMALL_TABLE_CONFIG)


def paper_config(name: str, base: TrainConfig | None = None) -> TrainConfig:
    """The paper's named configuration (``"1-A"`` ... ``"3-D"``) on top of ``base`` (default settings), or
    the small-table variant ``"1-S"`` (:func:`small_table_config`)."""
    if name.upper() == SMALL_TABLE_CONFIG:
        return small_table_config(base)
    model, _, variant = name.upper().partition("-")
    if model not in PAPER_DELTAS or variant not in PAPER_VARIANTS:
        raise ValueError(f"unknown configuration {name!r}; choose from {', '.join(PAPER_CONFIGS)}")
    optimizer, initialiser = PAPER_VARIANTS[variant]
    return replace(base or TrainConfig(), delta=PAPER_DELTAS[model], optimizer=optimizer,
                   initialiser=initialiser, name=f"{model}-{variant}")


@dataclass(frozen=True)
class EvaluateConfig:
    """``hitmusic evaluate``: the paper's procedure (section V-C) and the comparison it reports.

    An 80/20 stratified train/test split; stratified k-fold CV on the training part; every model and
    baseline fitted on the same folds with the same scaling; validation metrics averaged over folds, and
    each fold's model scored on the same held-out test rows (averaged too, as the authors' result files).
    """

    configs: tuple[str, ...] = ("1-A", "1-B", "2-B", "3-C", "1-S")
    baselines: tuple[str, ...] = ("mean", "mlr", "lasso", "lda", "mlp", "hgb")
    n_folds: int = 5
    # Ranking metrics look at the top fraction of the test rows by true popularity (Yu et al. use 10 %).
    top_fraction: float = 0.1
    # t-SNE of the code is quadratic-ish in points; a sample of the test rows is enough to see the classes.
    tsne_points: int = 2000
    experiment: str = "hitmusicnet-evaluate"
    seed: int = 42


@dataclass(frozen=True)
class ServeSettings:
    """The online service (``serve/app.py``); every field can be set from the Serve config file's ``args``."""

    model_name: str = "hitmusicnet"
    alias: str = "champion"
    tracking_uri: str | None = None
    # How often replicas ask the registry where the alias points; a move is picked up within this time.
    poll_interval_s: float = 10.0
    max_rows: int = 1024
    # /predict's JSON body, checked from Content-Length and while streaming, before parsing (1,024 rows of
    # 438 features are ~10 MB of JSON)
    max_body_mb: float = 16.0
    # /predict/audio's multipart body (file + lyrics + metadata), checked the same way before spooling
    max_upload_mb: float = 20.0
    max_duration_s: float = InputPolicy.max_duration_s
    max_lyric_chars: int = InputPolicy.max_lyric_chars
    max_lyric_lines: int = InputPolicy.max_lyric_lines
    # Dynamic batching across requests that overlap in a replica (@serve.batch); 1 turns it off. The batcher
    # waits at most batch_wait_timeout_s for more requests; 0 combines only those already waiting. For this
    # model (~0.2 ms per call) 0 and 2 ms were within run-to-run noise in benchmarks/bench_online.py (HAProxy,
    # separate runs: p99 5.9 vs 5.1 ms at 100 req/s), and 0 never holds a request back.
    max_batch_size: int = 256
    batch_wait_timeout_s: float = 0.0

    @classmethod
    def from_args(cls, args: dict) -> "ServeSettings":
        """From string arguments (``serve run ... key=value`` or the config file); unknown keys are an error."""
        fields = cls.__dataclass_fields__
        unknown = set(args) - set(fields)
        if unknown:
            raise ValueError(f"unknown serve argument(s) {sorted(unknown)}; known: {sorted(fields)}")
        typed = {}
        for k, v in args.items():
            kind = fields[k].type
            typed[k] = v if v is None or "str" in str(kind) else (float(v) if "float" in str(kind) else int(v))
        return cls(**typed)


@dataclass(frozen=True)
class ServiceConfig:
    """Where the long-running services live. Everything binds to loopback unless told otherwise."""

    home: Path = field(default_factory=default_home)
    host: str = "127.0.0.1"
    mlflow_port: int = 5000
    serve_port: int = 8000
    ray_port: int = 6379
    ray_dashboard_port: int = 8265
    # the address the Ray head advertises to the nodes that join it ($HITMUSIC_RAY_NODE_IP): loopback on one
    # machine; the head's LAN address when machines on a LAN join (cluster/README.md). The dashboard, the jobs
    # API and MLflow stay on ``host`` either way.
    ray_node_ip: str = field(default_factory=lambda: os.environ.get("HITMUSIC_RAY_NODE_IP", "127.0.0.1"))
    # Serve's HTTP ingress: "haproxy" (HAProxy in front of the replicas' own HTTP servers: ~3x less latency
    # per request than Ray's Python proxy on 2 cores, benchmarks/README.md), "proxy" (Ray's Python proxy),
    # or "auto" (haproxy where the binary is installed). Read when Ray starts: $HITMUSIC_SERVE_INGRESS.
    serve_ingress: str = field(default_factory=lambda: os.environ.get("HITMUSIC_SERVE_INGRESS", "auto"))
    # where `hitmusic up`'s MLflow server keeps artifacts: HOME/mlflow/artifacts, or an s3:// prefix
    # ($HITMUSIC_MLFLOW_ARTIFACTS; the server's AWS environment and MLFLOW_S3_ENDPOINT_URL reach it)
    mlflow_artifacts: str | None = field(default_factory=lambda: os.environ.get("HITMUSIC_MLFLOW_ARTIFACTS"))

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


@dataclass(frozen=True)
class TrackingClientConfig:
    """How long a client of the MLflow server waits for it. MLflow's own defaults (7 retries with backoff
    factor 2, 120 s per request) keep a command silent for minutes when the server is down; these give up
    after about 15 s with a message that says so. MLflow's environment variables, when set, win."""

    max_retries: int = 4  # MLFLOW_HTTP_REQUEST_MAX_RETRIES: waits of ~0, 2, 4 and 8 s (backoff factor 1)
    backoff_factor: int = 1  # MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR (an integer to MLflow)
    timeout_s: float = 30.0  # MLFLOW_HTTP_REQUEST_TIMEOUT: one request to a server that accepted it but hangs
    # A training whose server went away waits this long for it to come back, to record the run as FAILED
    # rather than leave it RUNNING forever: $HITMUSIC_MLFLOW_END_RUN_WAIT_S
    end_run_wait_s: float = field(
        default_factory=lambda: float(os.environ.get("HITMUSIC_MLFLOW_END_RUN_WAIT_S", "120")))

    def env(self) -> dict[str, str]:
        """The MLflow client's environment variables for these settings."""
        return {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(self.max_retries),
                "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(self.backoff_factor),
                "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(self.timeout_s))}

    def apply(self) -> None:
        """Set :meth:`env` in this process where the user has not set the variables: MLflow reads them at
        each request, so this bounds every later call, in drivers, Ray workers and Serve replicas alike."""
        for k, v in self.env().items():
            os.environ.setdefault(k, v)


def tracking_uri(explicit: str | None = None) -> str:
    """The MLflow server to talk to: ``explicit``, else ``$MLFLOW_TRACKING_URI``, else the local server that
    ``hitmusic up`` starts. Never MLflow's own default (a ./mlruns folder), which a Ray worker or a
    ``ray job submit`` driver would silently create somewhere else. Every client of the server asks here
    first, so this is also where the client's waits are bounded (:class:`TrackingClientConfig`)."""
    TrackingClientConfig().apply()
    return explicit or ServiceConfig().tracking_uri
