"""The musicnn MTT tagger ported to PyTorch: the checkpoint reader, the network, and the golden activations
produced by musicnn's own TensorFlow code (tests/golden/musicnn_reference.sh)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hitmodels import audio, tagger, tf_checkpoint

GOLDEN = Path(__file__).parent / "golden" / "musicnn_mtt.json"


@pytest.fixture(scope="module")
def spec():
    return tagger.musicnn_spec()


@pytest.fixture(scope="module")
def tg():
    return tagger.Tagger()


def test_crc32c_known_answer():
    assert tf_checkpoint.crc32c(b"123456789") == 0xE3069283  # the Castagnoli check value
    assert tf_checkpoint.crc32c(b"") == 0


def test_checkpoint_index_matches_the_architecture(spec):
    index = tf_checkpoint.read_index(spec.checkpoint)
    model = tagger.MusicnnMTT()
    names = tagger.checkpoint_names(model)
    assert set(names) <= set(index)
    # the rest is the optimiser's state (Adam's two slots per variable and its beta powers), never read
    assert all("Adam" in n or n.endswith("_power") for n in set(index) - set(names))
    tensors = tf_checkpoint.read_tensors(spec.checkpoint, names)
    state = tagger.state_from_checkpoint(model, tensors)  # raises on any shape that disagrees
    assert set(state) == set(model.state_dict()) - {k for k in model.state_dict() if k.endswith("num_batches_tracked")}
    trainable = sum(int(np.prod(t.shape)) for n, t in tensors.items() if "moving_" not in n)
    assert trainable == sum(p.numel() for p in model.parameters()) == 787_159  # musicnn's "~787K parameters"
    assert index["conv2d/kernel"].shape == (7, 38, 1, 204) and index["conv2d/kernel"].dtype == "<f4"
    assert index["dense/kernel"].shape == (1506, 200)


def test_reader_refuses_a_corrupt_bundle(spec, tmp_path):
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copy(f"{spec.checkpoint}{suffix}", tmp_path / f"ck{suffix}")
    prefix = tmp_path / "ck"
    entry = tf_checkpoint.read_index(prefix)["dense_1/bias"]
    data = bytearray((tmp_path / "ck.data-00000-of-00001").read_bytes())
    data[entry.offset + 3] ^= 0x40
    (tmp_path / "ck.data-00000-of-00001").write_bytes(bytes(data))
    with pytest.raises(tf_checkpoint.CheckpointError, match="dense_1/bias fails its checksum"):
        tf_checkpoint.read_tensors(prefix, ["dense_1/bias"])
    assert tf_checkpoint.read_tensors(prefix, ["dense_1/bias"], verify=False)["dense_1/bias"].shape == (50,)
    with pytest.raises(tf_checkpoint.CheckpointError, match="no tensor named nope"):
        tf_checkpoint.read_tensors(prefix, ["nope"])
    index = bytearray((tmp_path / "ck.index").read_bytes())
    index[10] ^= 0xFF  # inside the first data block
    (tmp_path / "ck.index").write_bytes(bytes(index))
    with pytest.raises(tf_checkpoint.CheckpointError, match="checksum"):
        tf_checkpoint.read_index(prefix)
    (tmp_path / "ck.index").write_bytes(b"not a table" * 10)
    with pytest.raises(tf_checkpoint.CheckpointError, match="bad magic"):
        tf_checkpoint.read_index(prefix)


def test_missing_wheel_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HITMUSIC_MUSICNN_DIR", str(tmp_path))
    with pytest.raises(tagger.TaggerUnavailable, match="configuration"):
        tagger.musicnn_spec(tagger.musicnn_dir())


@pytest.mark.parametrize("through", ["numpy", "torch"])
def test_fast_forward_equals_the_plain_convolutions(through, monkeypatch):
    """The windowed-product forward (its block-Toeplitz products, its max/min trick for negative batch-norm
    scales) is the network, on the CPU's NumPy path and on the torch path a GPU takes (run here on the CPU)."""
    monkeypatch.setattr(tagger, "_through_numpy", lambda x: through == "numpy")
    torch.manual_seed(0)
    m = tagger.MusicnnMTT()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                n = mod.num_features
                mod.weight.copy_(torch.randn(n))  # about half the scales negative
                mod.bias.copy_(torch.randn(n) * 0.1)
                mod.running_mean.copy_(torch.randn(n) * 0.1)
                mod.running_var.copy_(torch.rand(n) + 0.5)
    x = torch.randn(3, tagger.PATCH_FRAMES, 96)
    with torch.inference_mode():
        np.testing.assert_allclose(m(x).numpy(), tagger.plain_forward(m, x).numpy(), atol=2e-5)
        # the front-end maps themselves, at lengths on and off the blocks (8 time steps, 4 frequencies)
        for frames in (1, 7, 8, 9, 200):
            x = torch.randn(2, frames, 96)
            np.testing.assert_allclose(m.frontend(x).numpy(), tagger.plain_frontend(m, x).transpose(1, 2).numpy(), atol=2e-5, rtol=1e-5)


def test_patches_and_short_clips():
    rep = np.arange(400 * 96, dtype=np.float32).reshape(400, 96)
    p = tagger.patches(rep)
    assert p.shape == (2, 187, 96)  # the remainder (26 frames) is dropped, as musicnn drops it
    np.testing.assert_array_equal(p[1, 0], rep[187])
    short = tagger.patches(rep[:50])
    assert short.shape == (1, 187, 96)
    np.testing.assert_array_equal(short[0, 50], rep[0])  # repeated, as musicnn's training padded short clips
    with pytest.raises(ValueError):
        tagger.patches(rep[:0])


def test_short_clip_is_tagged(tg):
    y = np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 0.1  # 1 s: musicnn crashes here
    acts = tg.tag(y, 16000)
    assert acts.shape == (50,) and np.all((acts > 0) & (acts < 1))
    with pytest.raises(ValueError, match="16000 Hz"):
        tg.tag(y, 22050)


def test_golden_activations_of_musicnn(tg, shared_dir):
    """Within 2e-5 of musicnn's TensorFlow code on every tag of the four real previews (see the JSON's
    ``how`` and ``made_with``), per 3 s patch and averaged. The issue asks for 1e-3; the port reaches 3.4e-6,
    and 2e-5 is what catches a lost detail of the preprocessing (without the float16 rounding of the mel
    power the activations move by 3e-5 to 1.1e-4)."""
    ref = json.loads(GOLDEN.read_text())
    assert list(tg.labels) == ref["labels"]
    for name, clip in ref["clips"].items():
        y, sr = audio.decode((shared_dir / "data" / "audio" / name).read_bytes(), tg.spec.sr)
        p = tg.clip_patches(y, sr)
        assert len(p) == clip["patches"]
        acts = tg.activations(p)
        np.testing.assert_allclose(acts, np.array(clip["taggram"]), atol=2e-5, err_msg=name)
        np.testing.assert_allclose(acts.mean(axis=0), np.array(clip["mean"]), atol=2e-5, err_msg=name)
        np.testing.assert_allclose(tg.tag(y, sr), np.array(clip["mean"]), atol=2e-5, err_msg=name)


def test_tags_are_plausible(tg, shared_dir):
    top = {}
    for name in ("rock", "edm", "soul"):
        y, sr = audio.decode((shared_dir / "data" / "audio" / f"{name}.mp3").read_bytes(), tg.spec.sr)
        acts = tg.tag(y, sr)
        top[name] = {tg.labels[i] for i in np.argsort(-acts)[:5]}
    assert top["rock"] & {"rock", "guitar"}, top
    assert top["edm"] & {"techno", "electronic", "dance", "synth"}, top
    assert top["soul"] & {"female", "woman", "female vocal", "vocal", "female voice"}, top


def test_tags_command(shared_dir, tmp_path, capsys):
    from pipelines import tags

    rock = shared_dir / "data" / "audio" / "rock.mp3"
    assert tags.main(["--json", "--top", "3", "--device", "cpu", str(rock), str(tmp_path / "gone.mp3")]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["file"]).name for r in lines] == ["rock.mp3", "gone.mp3"]
    assert lines[0]["error"] is None and len(lines[0]["tags"]) == 50 and len(lines[0]["top"]) == 3
    assert lines[0]["top"][0] == max(lines[0]["tags"], key=lines[0]["tags"].get)
    assert lines[1]["error"].startswith("missing") and lines[1]["tags"] is None
    assert tags.main(["--device", "cpu", str(rock)]) == 0
    assert capsys.readouterr().out.startswith(f"{rock}: techno 0.50")


def test_evaluate_can_leave_the_tag_columns_out(tmp_path):
    import argparse

    import pandas as pd

    from pipelines import evaluate

    path = tmp_path / "table.parquet"
    pd.DataFrame({"track_id": ["a", "b"], "popularity": [1.0, 2.0], "MEL_1": [0.1, 0.2],
                  "tag_rock": [0.3, 0.4], "tag_no_vocals": [0.5, 0.6]}).to_parquet(path)
    p = argparse.ArgumentParser()
    evaluate.add_arguments(p)
    assert "tag_rock" in evaluate.load_table(p.parse_args([str(path)])).columns
    assert list(evaluate.load_table(p.parse_args([str(path), "--no-tag-columns"])).columns) == \
        ["track_id", "popularity", "MEL_1"]
