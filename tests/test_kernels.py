"""Models on feature rows as arrays (hitmodels/kernels.py): every family's NumPy kernel answers what the
model itself answers, pickles small and loads without torch or mlflow, which is what a batch job's fresh
workers gain."""

from __future__ import annotations

import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hitmodels import families
from hitmodels.config import TrainConfig, small_table_config
from hitmodels.data import feature_columns
from hitmodels.train import split_rows
from tables import random_table

ROOT = Path(__file__).parents[1]
QUICK = TrainConfig(ae_epochs=3, mlp_epochs=3, classifier=True)
CASES = {
    "lasso": ("lasso", QUICK),
    "hgb": ("hgb", replace(QUICK, params={"max_iter": 20})),
    "hitmusicnet 1-B": ("hitmusicnet", QUICK),
    "hitmusicnet 1-S": ("hitmusicnet", replace(small_table_config(QUICK), mlp_epochs=3)),
    "siamese-hitmusicnet ab+artist": ("siamese-hitmusicnet", replace(QUICK, params={"sampling": "ab+artist",
                                                                                    "epochs": 2})),
}


@pytest.fixture(scope="module")
def table():
    df = random_table(3, 300)
    rng = np.random.default_rng(3)
    df["popularity"] = np.clip(0.6 * df["artist_popularity"] + 20 * np.sin(df["MEL_1"] * 3)
                               + rng.normal(0, 4, len(df)), 0, 100)
    cols = feature_columns(df)
    df.loc[rng.choice(len(df), 15, replace=False), cols[2]] = np.nan  # imputed by both paths
    return df


@pytest.mark.parametrize("case", CASES)
def test_a_familys_kernel_answers_what_its_model_answers(case, table):
    name, cfg = CASES[case]
    s = split_rows(table, cfg)
    cfg = replace(cfg, family=name)
    model = families.get(name).fit(s.fit, s.val, s.calib, feature_columns(table), cfg).model
    kernel = pickle.loads(pickle.dumps(model.kernel()))
    X = s.test[model.columns].to_numpy(np.float32)
    X[0, :5] = np.inf  # as the model's own path: imputed
    want, got = model.predict_array(X), kernel.predict_array(X, chunk_rows=7)  # chunks of odd sizes
    assert list(got) == list(want) == model.outputs
    for k in want:
        if want[k].dtype == object:
            assert (got[k] == want[k]).all(), k
        else:
            diff = np.abs(got[k] - want[k]).max()
            print(f"{case}: {k} largest difference {diff:.2e}")
            assert diff <= (1e-4 if k.startswith("popularity") or k == "percentile" else 1e-6), k


def test_a_kernel_loads_and_scores_without_torch_mlflow_or_scikit_learn(table, tmp_path):
    """What a fresh worker does: unpickle the kernel, score. It must not import the heavy libraries whose
    import (seconds of a core) is what the kernel is for."""
    s = split_rows(table, QUICK)
    model = families.get("hitmusicnet").fit(s.fit, s.val, s.calib, feature_columns(table),
                                            replace(QUICK, family="hitmusicnet")).model
    (tmp_path / "k.pkl").write_bytes(pickle.dumps(model.kernel()))
    np.save(tmp_path / "x.npy", s.test[model.columns].to_numpy(np.float32))
    code = ("import pickle, sys, numpy as np; from pipelines import score_rows; "
            f"k = pickle.loads(open({str(tmp_path / 'k.pkl')!r}, 'rb').read()); "
            f"out = k.predict_array(np.load({str(tmp_path / 'x.npy')!r})); "
            "heavy = sorted(m for m in ('torch', 'mlflow', 'sklearn') if m in sys.modules); "
            "print(len(out['popularity']), heavy)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(len(s.test)), "[]"]


def test_a_program_refuses_an_unknown_step():
    from hitmodels.kernels import Program

    with pytest.raises(ValueError, match="unknown program step"):
        Program([("gelu", "h", "x")], {}, "h")
    with pytest.raises(ValueError, match="unknown program step"):
        Program([("affine", "h", "x", "W")], {}, "h")  # an argument short
