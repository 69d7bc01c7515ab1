"""A pretrained 50-tag music tagger: musicnn's ``MTT_musicnn``, ported to PyTorch, weights read as data.

Yu et al. (ICASSP 2018) feed the 50 MagnaTagATune tag activations of a pretrained tagger (JYnet) to their best
models. JYnet is not published; musicnn's MTT_musicnn (Pons & Serra, "musicnn: pre-trained convolutional
neural networks for music audio tagging", ISMIR 2019 LBD; ISC licence, Music Technology Group, Universitat
Pompeu Fabra) was trained for the same job on the same dataset and ships its checkpoint in the ``musicnn``
wheel on PyPI. ``make setup`` installs that wheel without its dependencies (its TensorFlow 1.x-era pins
conflict with this project's); this module reads the architecture's settings and the tag names from the
wheel's ``configuration.py`` (parsed, not imported), the weights from its TensorFlow checkpoint with
:mod:`hitmodels.tf_checkpoint` (no TensorFlow), and runs the network in PyTorch. Nothing is downloaded.

Numerics, arrays in and arrays out:

- :func:`log_mel` -- musicnn's input: mono audio at 16 kHz, 512-point Hann STFT, hop 256, 96 Slaney mel
  bands, power, rounded to float16 and compressed as ``log10(10000 x + 1)``, exactly as
  ``musicnn.extractor.batch_data`` computes it under numpy 1.x; ``(n_frames, 96)`` float32.
- :func:`patches` -- non-overlapping 187-frame (3 s) patches ``(n_patches, 187, 96)``; the remainder is
  dropped as musicnn drops it. A clip shorter than one patch (musicnn crashes on those) is repeated to fill
  one, which is how musicnn's training pipeline padded short clips (``pad_short: repeat-pad``).
- :class:`MusicnnMTT` -- the network, patches to ``(n_patches, 50)`` sigmoid activations. A clip's tags are
  the mean over its patches (musicnn's taggram, averaged).

The port follows TensorFlow's conventions where they differ from PyTorch's: kernels stored HWIO, batch
normalisation *after* the ReLU with epsilon 1e-3, "same" padding that puts the odd extra sample at the end,
zero padding applied to the normalised input, and the back-end's max and mean pools interleaved
channel by channel (``[max_0, mean_0, max_1, ...]``) before its dense layer. ``tests/test_tagger.py`` holds
it to activations produced by musicnn's own TensorFlow code (``tests/golden/``) within 1e-3.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import tf_checkpoint

MODEL = "MTT_musicnn"
BN_EPS = 1e-3  # tf.compat.v1.layers.batch_normalization's default
# What this port was written against; the wheel's configuration.py must agree (checked when it is read).
EXPECTED = {"SR": 16000, "FFT_HOP": 256, "FFT_SIZE": 512, "N_MELS": 96}
PATCH_FRAMES = 187  # librosa.time_to_frames(3 s, sr=16000, n_fft=512, hop_length=256) + 1, as musicnn computes
TEMPORAL_BLOCK = 8  # outputs per row of the front-end's products (see MusicnnMTT.frontend), measured best
TIMBRAL_BLOCK = 4  # (bench_tagger.py's per-clip time, with 1-32 and 1-8 tried)
MAX_PATCHES_PER_BATCH = 16  # a forward pass holds ~15 MB of windows and maps per patch (by their shapes): ~0.25 GB


class TaggerUnavailable(RuntimeError):
    """musicnn's wheel (the weights) is not installed or not what this port expects."""


@dataclass(frozen=True)
class MusicnnSpec:
    """What the installed wheel says: where the checkpoint is, the preprocessing constants, the tag names."""

    checkpoint: str  # the bundle prefix: the wheel stores ``MTT_musicnn/.index`` etc., so it ends in "/"
    sr: int
    hop_length: int
    n_fft: int
    n_mels: int
    labels: tuple[str, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        """Feature column names: ``tag_<label>``, spaces as underscores (``tag_no_vocals``)."""
        return tuple(tag_column(label) for label in self.labels)


def tag_column(label: str) -> str:
    return "tag_" + label.replace(" ", "_")


def musicnn_dir() -> Path:
    """The installed ``musicnn`` package folder (``$HITMUSIC_MUSICNN_DIR`` overrides), found without importing
    it: its ``tagger`` module imports TensorFlow."""
    override = os.environ.get("HITMUSIC_MUSICNN_DIR")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("musicnn")
    if spec is None or not spec.submodule_search_locations:
        raise TaggerUnavailable("the musicnn wheel is not installed: `make setup` installs it "
                                "(pip install --no-deps -c constraints.txt musicnn); it carries the tagger's weights")
    return Path(list(spec.submodule_search_locations)[0])


@lru_cache(maxsize=4)
def musicnn_spec(folder: Path | None = None) -> MusicnnSpec:
    """Read ``configuration.py`` of the wheel as data (``ast.literal_eval`` of its assignments)."""
    folder = Path(folder) if folder else musicnn_dir()
    conf = folder / "configuration.py"
    try:
        tree = ast.parse(conf.read_text(), filename=str(conf))
    except (OSError, SyntaxError) as exc:
        raise TaggerUnavailable(f"{conf}: cannot read musicnn's configuration ({exc})") from exc
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    wrong = {k: values.get(k) for k, v in EXPECTED.items() if values.get(k) != v}
    labels = values.get("MTT_LABELS")
    if wrong or not isinstance(labels, list) or len(labels) != 50:
        raise TaggerUnavailable(f"{conf}: not the musicnn 0.1.0 this port was written for "
                                f"(differs: {wrong or 'MTT_LABELS'})")
    checkpoint = f"{folder / MODEL}/"
    if not Path(f"{checkpoint}.index").is_file():
        raise TaggerUnavailable(f"{checkpoint}.index is missing from the musicnn wheel")
    return MusicnnSpec(checkpoint=checkpoint, sr=values["SR"], hop_length=values["FFT_HOP"],
                       n_fft=values["FFT_SIZE"], n_mels=values["N_MELS"], labels=tuple(labels))


# ---- preprocessing -----------------------------------------------------------------------------------------

def log_mel(y: np.ndarray, spec: MusicnnSpec) -> np.ndarray:
    """musicnn's input representation of mono float32 ``y`` at ``spec.sr`` Hz: ``(n_frames, n_mels)`` float32,
    ``n_frames = 1 + len(y) // hop``."""
    import librosa  # the audio stack is loaded by what analyses audio

    M = librosa.feature.melspectrogram(y=np.asarray(y, np.float32), sr=spec.sr, hop_length=spec.hop_length,
                                       n_fft=spec.n_fft, n_mels=spec.n_mels).T
    # musicnn stores the mel power as float16, then (numpy 1.x value-based casting: 10000 is a uint16 scalar,
    # float16 x uint16 -> float32) compresses it in float32. The float16 rounding is part of what the
    # network was trained on; doing the product in float16, as numpy 2 would, overflows above 6.55.
    M = M.astype(np.float16).astype(np.float32)
    return np.log10(np.float32(10000) * M + np.float32(1))


def patches(rep: np.ndarray, n_frames: int = PATCH_FRAMES) -> np.ndarray:
    """Non-overlapping ``n_frames`` patches of ``rep`` ``(T, n_mels)``: ``(max(1, T // n_frames), n_frames,
    n_mels)`` float32. A representation shorter than a patch is tiled to fill one."""
    rep = np.asarray(rep)
    if rep.shape[0] == 0:
        raise ValueError("no frames to tag")
    if rep.shape[0] < n_frames:
        rep = np.tile(rep, (-(-n_frames // rep.shape[0]), 1))[:n_frames]
    n = rep.shape[0] // n_frames
    return np.ascontiguousarray(rep[: n * n_frames].reshape(n, n_frames, rep.shape[1]), dtype=np.float32)


# ---- the network -------------------------------------------------------------------------------------------

class _BN(nn.BatchNorm1d):
    """Inference-only batch normalisation over dim 1, TF's epsilon."""

    def __init__(self, n: int):
        super().__init__(n, eps=BN_EPS)


def _same_pad(k: int) -> tuple[int, int]:
    """TensorFlow's "same" padding of a stride-1 kernel of ``k``: the odd sample goes after."""
    return (k - 1) // 2, k // 2


class MusicnnMTT(nn.Module):
    """MTT_musicnn (``musicnn.models.build_musicnn`` with 64 mid-end filters and 200 back-end units).

    Input ``(batch, 187, 96)`` (time, mel) as :func:`patches` gives; output ``(batch, 50)`` sigmoid
    activations. Front-end: two timbral convolutions (7 x 38 and 7 x 67 over time x frequency, 204 filters)
    and three temporal ones (128, 64, 32 x 1, 51 filters), each max-pooled over frequency; mid-end: three
    1-D convolutions over time (7, 64 filters) with residual connections; back-end: max and mean over time
    of everything concatenated (753 channels), a 200-unit dense layer, the 50 outputs."""

    TIMBRAL = ((7, 38), (7, 67))
    TEMPORAL = (128, 64, 32)

    def __init__(self, n_mels: int = 96, n_classes: int = 50, timbral_filters: int = 204,
                 temporal_filters: int = 51, midend_filters: int = 64, backend_units: int = 200):
        super().__init__()
        self.bn_input = nn.BatchNorm2d(1, eps=BN_EPS)
        self.timbral = nn.ModuleList(nn.Conv2d(1, timbral_filters, k) for k in self.TIMBRAL)
        self.timbral_bn = nn.ModuleList(_BN(timbral_filters) for _ in self.TIMBRAL)
        self.temporal = nn.ModuleList(nn.Conv2d(1, temporal_filters, (k, 1)) for k in self.TEMPORAL)
        self.temporal_bn = nn.ModuleList(_BN(temporal_filters) for _ in self.TEMPORAL)
        front = len(self.TIMBRAL) * timbral_filters + len(self.TEMPORAL) * temporal_filters
        self.midend = nn.ModuleList([nn.Conv1d(front, midend_filters, 7)]
                                    + [nn.Conv1d(midend_filters, midend_filters, 7) for _ in range(2)])
        self.midend_bn = nn.ModuleList(_BN(midend_filters) for _ in range(3))
        pooled = front + 3 * midend_filters
        self.bn_pool = _BN(2 * pooled)
        self.dense = nn.Linear(2 * pooled, backend_units)
        self.bn_dense = _BN(backend_units)
        self.out = nn.Linear(backend_units, n_classes)
        self.eval()

    # Each convolution runs as one matrix product over explicit windows, channels last: mathematically the
    # convolution, and for these shapes (one input channel, kernels up to 7 x 67) three times faster on a
    # CPU core than torch's conv2d. On the CPU the windows and products go through NumPy (its OpenBLAS keeps
    # ~60 GFLOPS on these skinny products on this machine's AMD cores, where torch's MKL gets ~25); on a GPU
    # through torch. benchmarks/bench_tagger.py measures the result against the machine's FLOPS.

    def frontend(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, F)`` -> ``(B, T, 561)``: timbral then temporal maps, each max-pooled over frequency."""
        scale, shift = _affine(self.bn_input)
        x = x * scale + shift
        B, T, Fq = x.shape
        feats = []
        # time padded only: the timbral maps are max-pooled over all (valid) frequencies; blocked as the
        # temporal products below, TIMBRAL_BLOCK frequencies per row (the zeros past F feed only outputs
        # that are cut off before the max)
        Lf = TIMBRAL_BLOCK
        for conv, bn in zip(self.timbral, self.timbral_bn):
            kh, kw = conv.kernel_size
            n = -(-(Fq - kw + 1) // Lf)
            padded = F.pad(x, (0, n * Lf - (Fq - kw + 1), 3, 3))
            win = _windows(padded, (kh, kw + Lf - 1), (1, 2), Lf)  # (B * T * n, kh * (kw + Lf - 1))
            feats.append(_relu_bn_max(win, (B, T, n * Lf), 2, conv, bn, block=Lf, keep=Fq - kw + 1))
        # frequency-major; one zero-padded series serves the three kernels: a "same" window of 64 or 32 lies
        # inside the one of 128 (at offset 32 or 48), the odd sample after the centre as TensorFlow pads. Each
        # kernel runs block-Toeplitz (see _block_kernel): windows of k + L - 1 samples every L steps, L outputs
        # per row, so the product is L x 51 wide instead of 51 (BLAS is ~3x faster on it) and the windows
        # are L times fewer, for (k + L - 1) / k times the multiply-adds.
        L, longest = TEMPORAL_BLOCK, max(self.TEMPORAL)
        n = -(-T // L)
        left, right = _same_pad(longest)
        series = F.pad(x.transpose(1, 2), (left, right + n * L - T))  # (B, F, n L + 127)
        for conv, bn, k in zip(self.temporal, self.temporal_bn, self.TEMPORAL):
            start = left - _same_pad(k)[0]
            win = _windows(series[:, :, start:start + (n - 1) * L + k + L - 1], (k + L - 1,), (2,), L)
            feats.append(_relu_bn_max(win, (B, Fq, n * L), 1, conv, bn, block=L, keep=T))
        return torch.cat(feats, dim=2)

    def midend_features(self, front: torch.Tensor) -> torch.Tensor:
        """``(B, T, 561)`` -> ``(B, T, 753)``: the front-end and the three mid-end maps (dense connection)."""
        B, T, _ = front.shape
        maps = [front]
        h = front
        for i, (conv, bn) in enumerate(zip(self.midend, self.midend_bn)):
            win = _windows(F.pad(h, (0, 0, 3, 3)), (7,), (1,))  # (B * T, C * 7): conv1d's (C, k) weight order
            z = _matmul(win, _kernel(conv).T).reshape(B, T, conv.out_channels) + conv.bias
            z = _bn_last(F.relu(z), bn)
            h = z if i == 0 else z + h
            maps.append(h)
        return torch.cat(maps, dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.midend_features(self.frontend(x))
        # TF concatenates [max, mean] on a trailing axis and flattens: channel-interleaved
        pooled = torch.stack([feats.amax(dim=1), feats.mean(dim=1)], dim=2).flatten(1)
        h = self.bn_dense(F.relu(self.dense(self.bn_pool(pooled))))
        return torch.sigmoid(self.out(h))


def _affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference batch normalisation as ``x * scale + shift``."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _bn_last(z: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """Batch normalisation of a channels-last tensor."""
    scale, shift = _affine(bn)
    return z * scale + shift


def _kernel(conv: nn.Conv1d | nn.Conv2d) -> torch.Tensor:
    """A convolution's weight as ``(out_channels, in_channels x kernel)``."""
    return conv.weight.detach().reshape(conv.out_channels, -1)


def _through_numpy(x: torch.Tensor) -> bool:
    """Whether the windows and products of ``x`` go through NumPy (the CPU) or torch (a GPU)."""
    return x.device.type == "cpu"


def _windows(x: torch.Tensor, size: tuple[int, ...], axes: tuple[int, ...], step: int = 1) -> torch.Tensor:
    """Every window of ``size`` along ``axes`` of ``x`` (stride 1, or ``step`` along the last axis), one per
    row: ``(n_windows, prod(size) x remaining trailing dims)`` contiguous, rows in the order of the window
    positions and the window's own dims last (``numpy.lib.stride_tricks.sliding_window_view``'s order,
    which is ``Tensor.unfold``'s)."""
    if _through_numpy(x):
        w = np.lib.stride_tricks.sliding_window_view(x.detach().numpy(), size, axis=axes)
        if step > 1:
            w = w[(slice(None),) * axes[-1] + (slice(None, None, step),)]
        lead = w.shape[: x.dim()]
        return torch.from_numpy(np.ascontiguousarray(w).reshape(int(np.prod(lead[:axes[-1] + 1])), -1))
    w = x
    for i, (size_i, axis) in enumerate(zip(size, axes)):
        w = w.unfold(axis, size_i, step if i == len(axes) - 1 else 1)
    lead = w.shape[: x.dim()]
    return w.reshape(int(np.prod(lead[:axes[-1] + 1])), -1)


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for 2-D ``a``, ``b``; through NumPy's BLAS on the CPU (see the note in MusicnnMTT)."""
    if _through_numpy(a):
        return torch.from_numpy(np.matmul(a.detach().numpy(), b.detach().numpy()))
    return a @ b


def _window_kernel(conv: nn.Conv2d) -> torch.Tensor:
    """A front-end kernel in its windows' layout: ``(out, kh, kw)`` for the timbral ones (one input channel),
    ``(out, k)`` for the temporal ones (``k x 1``, windows along time only)."""
    w = conv.weight.detach()[:, 0]
    return w[..., 0] if w.shape[-1] == 1 else w


def _block_kernel(kernel: torch.Tensor, block: int) -> torch.Tensor:
    """A convolution's ``(out, ..., k)`` kernel as the ``(... x (k + block - 1), block x out)`` matrix that
    maps one window of ``k + block - 1`` samples along the last axis to ``block`` consecutive outputs along it
    (column ``l x out + c`` holds output channel ``c`` at offset ``l``): a block of a Toeplitz matrix, zero
    off its band."""
    out, *lead, k = kernel.shape
    blocked = kernel.new_zeros(*lead, k + block - 1, block, out)
    moved = kernel.permute(*range(1, kernel.dim()), 0)  # (..., k, out)
    for offset in range(block):
        blocked[..., offset:offset + k, offset, :] = moved
    return blocked.reshape(-1, block * out)


def _relu_bn_max(win: torch.Tensor, lead: tuple[int, int, int], axis: int, conv: nn.Conv2d,
                 bn: nn.modules.batchnorm._BatchNorm, block: int = 1, keep: int | None = None) -> torch.Tensor:
    """``max over frequency of BN(ReLU(conv))`` of a front-end convolution from its windows ``(prod(lead),
    k)``, whose rows are the positions ``lead`` (batch and time, frequency at ``axis``): ``(B, T, C)``. With
    ``block``, the windows are :func:`_block_kernel`'s, ``block`` positions of the last axis per row, of
    which the first ``keep`` are kept.

    Computed with one product and one max-reduction: ReLU is monotone and inference batch normalisation is
    ``s x + shift`` per channel, so the max over frequency of BN(ReLU(z)) is BN(ReLU(max z)) where ``s >= 0``
    and BN(ReLU(min z)) where ``s < 0``; the min of z is minus the max of the convolution with negated
    weights. The activation map is never normalised or rectified element by element."""
    scale, shift = _affine(bn)
    sign = torch.where(scale < 0, -1.0, 1.0).to(scale.dtype)
    kernel = _window_kernel(conv)
    kernel = kernel * sign.view(-1, *[1] * (kernel.dim() - 1))
    z = _matmul(win, _block_kernel(kernel, block)).reshape(*lead, conv.out_channels)
    if keep is not None:
        z = z[:, :, :keep]
    extreme = sign * (z.amax(dim=axis) + conv.bias * sign)  # the max (s >= 0) or the min (s < 0) over F
    return F.relu(extreme) * scale + shift


def multiply_adds(m: MusicnnMTT, n_frames: int = PATCH_FRAMES, n_mels: int = 96) -> int:
    """Multiply-adds of one patch through the network's convolutions and dense layers (batch normalisation,
    pooling and activations, a fraction of a percent, left out): the work a FLOPS floor is computed from."""
    total = 0
    for conv in m.timbral:
        kh, kw = conv.kernel_size
        total += n_frames * (n_mels - kw + 1) * conv.out_channels * kh * kw
    for conv in m.temporal:
        total += n_frames * n_mels * conv.out_channels * conv.kernel_size[0]
    for conv in m.midend:
        total += n_frames * conv.out_channels * conv.in_channels * conv.kernel_size[0]
    return total + m.dense.in_features * m.dense.out_features + m.out.in_features * m.out.out_features


def _plain_bn(mod: nn.modules.batchnorm._BatchNorm, z: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(z, mod.running_mean, mod.running_var, mod.weight, mod.bias, False, 0.0, mod.eps)


def plain_frontend(m: MusicnnMTT, x: torch.Tensor) -> torch.Tensor:
    """:meth:`MusicnnMTT.frontend` written plainly with torch's ``conv2d``, NCHW: ``(B, T, F)`` ->
    ``(B, 561, T)``."""
    x = _plain_bn(m.bn_input, x.unsqueeze(1))  # (B, 1, T, F)
    feats = []
    for conv, b in zip(m.timbral, m.timbral_bn):
        feats.append(_plain_bn(b, F.relu(F.conv2d(F.pad(x, (0, 0, 3, 3)), conv.weight, conv.bias))).amax(dim=3))
    for conv, b, k in zip(m.temporal, m.temporal_bn, m.TEMPORAL):
        z = F.conv2d(F.pad(x, (0, 0, (k - 1) // 2, k // 2)), conv.weight, conv.bias)
        feats.append(_plain_bn(b, F.relu(z)).amax(dim=3))
    return torch.cat(feats, dim=1)


def plain_forward(m: MusicnnMTT, x: torch.Tensor) -> torch.Tensor:
    """The network written plainly with torch's own convolutions, NCHW, as musicnn's graph reads: the
    reference the fast forward is tested against and the peer benchmarks/bench_tagger.py times it against."""
    h = plain_frontend(m, x)  # (B, 561, T)
    maps = [h]
    for i, (conv, b) in enumerate(zip(m.midend, m.midend_bn)):
        z = _plain_bn(b, F.relu(F.conv1d(F.pad(h, (3, 3)), conv.weight, conv.bias)))
        h = z if i == 0 else z + h
        maps.append(h)
    feats = torch.cat(maps, dim=1)
    pooled = torch.stack([feats.amax(dim=2), feats.mean(dim=2)], dim=2).flatten(1)
    return torch.sigmoid(m.out(_plain_bn(m.bn_dense, F.relu(m.dense(_plain_bn(m.bn_pool, pooled))))))


def _tf_names(model: MusicnnMTT) -> list[tuple[str, nn.Module]]:
    """(TF variable scope, module): tf.compat.v1.layers numbers each layer type in creation order."""
    bns = ([model.bn_input] + list(model.timbral_bn) + list(model.temporal_bn) + list(model.midend_bn)
           + [model.bn_pool, model.bn_dense])
    convs = list(model.timbral) + list(model.temporal) + list(model.midend)
    named = [(("batch_normalization" + (f"_{i}" if i else "")), bn) for i, bn in enumerate(bns)]
    named += [(("conv2d" + (f"_{i}" if i else "")), conv) for i, conv in enumerate(convs)]
    named += [("dense", model.dense), ("dense_1", model.out)]
    return named


def _conv2d_kernel(k: np.ndarray) -> np.ndarray:
    return k.transpose(3, 2, 0, 1)  # TF's HWIO -> OIHW


def _conv1d_kernel(k: np.ndarray) -> np.ndarray:
    return k[:, :, 0, :].transpose(2, 1, 0)  # (7, C_in, 1, C_out), a 2-D kernel spanning all channels -> OIK


def _variables(model: MusicnnMTT) -> list[tuple[str, str, Callable[[np.ndarray], np.ndarray]]]:
    """(state_dict key, checkpoint variable, TF layout -> ours) for every tensor the network reads."""
    prefix = {id(m): name for name, m in model.named_modules()}
    out = []
    for tf_name, module in _tf_names(model):
        key = prefix[id(module)]
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            out += [(f"{key}.{ours}", f"{tf_name}/{theirs}", np.asarray) for ours, theirs in
                    (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                     ("running_var", "moving_variance"))]
            continue
        convert = (_conv2d_kernel if isinstance(module, nn.Conv2d) else
                   _conv1d_kernel if isinstance(module, nn.Conv1d) else np.transpose)  # Linear: TF has (in, out)
        out += [(f"{key}.weight", f"{tf_name}/kernel", convert), (f"{key}.bias", f"{tf_name}/bias", np.asarray)]
    return out


def checkpoint_names(model: MusicnnMTT) -> list[str]:
    """The checkpoint variables the network reads (the optimiser's slots are not among them)."""
    return [name for _, name, _ in _variables(model)]


def state_from_checkpoint(model: MusicnnMTT, tensors: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The model's ``state_dict`` from checkpoint tensors (TF layout), checking every shape."""
    own = model.state_dict()
    state = {}
    for key, name, convert in _variables(model):
        value = np.ascontiguousarray(convert(tensors[name]))
        if tuple(own[key].shape) != value.shape:
            raise tf_checkpoint.CheckpointError(f"{key}: checkpoint shape {value.shape}, the network's "
                                                f"{tuple(own[key].shape)}")
        state[key] = torch.from_numpy(value)
    return state


# ---- the tagger --------------------------------------------------------------------------------------------

class Tagger:
    """The loaded network and its preprocessing: ``Tagger().tag(y, sr)`` -> ``(50,)`` activations."""

    def __init__(self, device: str | torch.device = "cpu", folder: Path | None = None):
        self.spec = musicnn_spec(folder)
        self.device = torch.device(device)
        model = MusicnnMTT()
        tensors = tf_checkpoint.read_tensors(self.spec.checkpoint, checkpoint_names(model))
        model.load_state_dict(state_from_checkpoint(model, tensors))
        self.model = model.to(self.device).eval()

    @property
    def labels(self) -> tuple[str, ...]:
        return self.spec.labels

    def clip_patches(self, y: np.ndarray, sr: int) -> np.ndarray:
        """Patches of a mono clip at ``sr`` Hz (must be the tagger's 16 kHz: resample when decoding)."""
        if sr != self.spec.sr:
            raise ValueError(f"the tagger analyses audio at {self.spec.sr} Hz, got {sr} Hz")
        return patches(log_mel(y, self.spec))

    @torch.inference_mode()
    def activations(self, batch: np.ndarray) -> np.ndarray:
        """Network output ``(n, 50)`` float32 for patches ``(n, 187, 96)``, in bounded forward passes."""
        out = []
        for start in range(0, len(batch), MAX_PATCHES_PER_BATCH):
            x = torch.from_numpy(batch[start:start + MAX_PATCHES_PER_BATCH]).to(self.device)
            out.append(self.model(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)

    def tag_patches(self, clips: list[np.ndarray]) -> np.ndarray:
        """Mean activations per clip ``(n_clips, 50)`` of a list of patch arrays, run as one batch."""
        if not clips:
            return np.zeros((0, len(self.labels)), np.float32)
        acts = self.activations(np.concatenate(clips))
        bounds = np.cumsum([0] + [len(c) for c in clips])
        return np.stack([acts[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:])])

    def tag(self, y: np.ndarray, sr: int) -> np.ndarray:
        """Mean tag activations ``(50,)`` of one mono clip."""
        return self.tag_patches([self.clip_patches(y, sr)])[0]


@lru_cache(maxsize=2)
def shared(device: str = "cpu") -> Tagger:
    """One loaded tagger per process and device (loading reads and checks 3 MB of weights, ~1 s)."""
    return Tagger(device)


def tag_clips(clips: list[np.ndarray], sr: int, device: str = "cpu") -> np.ndarray:
    """Mean tag activations ``(n_clips, 50)`` of mono clips at ``sr`` (the tagger's 16 kHz), as one batch."""
    t = shared(device)
    return t.tag_patches([t.clip_patches(y, sr) for y in clips])
