"""The evaluation report: Markdown tables shaped like the paper's Tables 3-6 next to the published figures,
and the paper's plots (learning curves, t-SNE of the code as in Fig. 5, the popularity histogram with a
fitted normal as in Fig. 3), written as PNG files with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

from .config import CLASS_NAMES  # noqa: E402
from .evaluate import top_tag  # noqa: E402
from .crossval import CVResult  # noqa: E402

# Published figures (shared/reference/hitmusicnet-results.md). HitMusicNet on SPD: Table 3 (test MAE),
# Table 5 (test MSE/MAE of 1-A and the linear baselines), Table 4 (3-class validation accuracy / F1).
# LDA and MLP (Table 6) are 2-class results the paper quotes from other work, not SPD runs.
PUBLISHED: dict[str, dict[str, float]] = {
    "1-A": {"mae": 0.0855, "mse": 0.0118, "accuracy": 0.8303, "f1_macro": 0.8302},
    "1-B": {"mae": 0.0859},
    "2-B": {"mae": 0.0876, "accuracy": 0.8346},
    "3-C": {"mae": 0.0884, "accuracy": 0.8265},
    "MLR": {"mae": 0.1034, "mse": 0.0163},
    "MLR + Lasso": {"mae": 0.0986, "mse": 0.0145},
    "LDA (2 classes)": {"bin_f1_macro": 0.622},
    "MLP (2 classes)": {"bin_f1_macro": 0.748},
}
# Yu et al. (ICASSP 2018) Table 1, best row (Siamese, A/B + artist sampling), KKBOX play counts: for scale.
SIAMESE_BEST = {"ndcg": 0.1287, "kendall": 0.2421, "spearman": 0.3484}

# Yu et al. (ICASSP 2018) Table 1, top 10 % of their test set (KKBOX daily play counts, 15K songs):
# (our variant name, their model and features, nDCG@10%, Kendall@10%, Spearman@10%).
YU_TABLE1 = [
    ("rating-only (Mid-30)", "simple CNN, rating only, audio Mid-30", 0.0725, -0.0421, -0.0696),
    ("rating-only", "simple CNN, rating only, audio HL-30", 0.0999, 0.0735, 0.1121),
    ("rating-only+tag", "simple CNN, rating only, audio HL-30 + tags", 0.1241, 0.1080, 0.1663),
    ("naive", "Siamese, naive sampling, audio HL-30", 0.1069, 0.0828, 0.1222),
    ("artist+tag", "Siamese, artist sampling, audio HL-30 + tags", 0.1285, 0.1687, 0.2465),
    ("ab", "Siamese, A/B sampling, audio HL-30", 0.1127, 0.1852, 0.2713),
    ("ab+tag", "Siamese, A/B sampling, audio HL-30 + tags", 0.1287, 0.2415, 0.3481),
    ("ab+artist+tag", "Siamese, A/B + artist, audio HL-30 + tags", 0.1287, 0.2421, 0.3484),
]

CLASS_COLOURS = {"low": "tab:blue", "medium": "tab:orange", "high": "tab:red"}


def _cell(summary, model: str, split: str, metric: str, scale: float = 1.0, digits: int = 4) -> str:
    key = (model, split)
    if key not in summary.index or (metric, "mean") not in summary.columns:
        return ""
    mean, std = summary.loc[key, (metric, "mean")], summary.loc[key, (metric, "std")]
    if not np.isfinite(mean):
        return ""
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}" if np.isfinite(std) else f"{mean * scale:.{digits}f}"


def _published(model: str, metric: str, scale: float = 1.0, digits: int = 4) -> str:
    v = PUBLISHED.get(model, {}).get(metric)
    return "" if v is None else f"{v * scale:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(result: CVResult, plots: dict[str, str]) -> str:
    """The report's text: set-up, regression table (Tables 3 and 5), classification table (Tables 4 and 6),
    ranking and interval columns, and the plots."""
    s = result.summary()
    models = list(dict.fromkeys(result.scores["model"]))
    ev, base = result.settings["evaluate"], result.settings["base"]
    tag = top_tag(ev["top_fraction"])
    pct = f"{round(ev['top_fraction'] * 100)} %"
    reg_rows, cls_rows, rank_rows = [], [], []
    for m in models:
        if (m, "test") in s.index and np.isfinite(s.loc[(m, "test"), ("mae", "mean")]):
            reg_rows.append([m, _cell(s, m, "val", "mae"), _cell(s, m, "test", "mae"), _published(m, "mae"),
                             _cell(s, m, "test", "mse"), _published(m, "mse"), _cell(s, m, "test", "r2", digits=3),
                             _cell(s, m, "test", "spearman", digits=3), _cell(s, m, "test", "coverage", 100, 1),
                             _cell(s, m, "test", "interval_width", digits=1)])
            rank_rows.append([m] + [_cell(s, m, "test", f"{k}_{tag}", digits=3)
                                    for k in ("ndcg", "kendall", "spearman")])
        cls_rows.append([m, _cell(s, m, "val", "accuracy", 100, 1), _cell(s, m, "val", "f1_macro", 100, 1),
                         _published(m, "accuracy", 100, 2), _published(m, "f1_macro", 100, 2),
                         _cell(s, m, "test", "accuracy", 100, 1), _cell(s, m, "test", "f1_macro", 100, 1),
                         _cell(s, m, "test", "bin_f1_macro", 100, 1), _published(m, "bin_f1_macro", 100, 1),
                         _cell(s, m, "test", "class_agreement", 100, 1)])
    thr = ", ".join(f"{t:g}" for t in result.thresholds)
    text = [
        "# HitMusicNet evaluation",
        "",
        f"{result.n_rows} rows, {result.n_features} features; {result.n_test} test rows "
        + (f"({base['test_size']:.0%}, whole artists held out), {ev['n_folds']}-fold artist-grouped CV on the rest "
           if base.get("split") == "artist" else
           f"({base['test_size']:.0%}, stratified on popularity), {ev['n_folds']}-fold stratified CV on the rest ")
        + f"({base['calib_size']:.0%} of each training part held back to calibrate the "
        f"{base['coverage']:.0%} conformal interval). Classes: `{base['class_scheme']}` (boundaries {thr}). "
        f"Cells are mean ± standard deviation over the folds; *val* is each fold's held-out part, *test* the "
        f"same held-out rows scored by each fold's model. MAE/MSE are on popularity / 100.",
        "",
        "## Regression (paper Tables 3 and 5)",
        "",
        _table(["model", "val MAE", "test MAE", "published MAE", "test MSE", "published MSE", "test R²",
                "test Spearman", "interval coverage %", "interval width"], reg_rows),
        "",
        "## Classification (paper Tables 4 and 6)",
        "",
        "3 classes: HitMusicNet's softmax MusicPopNet, HistGradientBoosting's classifier, or the class of the "
        "predicted popularity for the linear regressions. 2 classes: popularity at or above the training median "
        "vs. below (for regressors: the predicted popularity thresholded there). Published accuracies are "
        "the paper's validation figures; its LDA/MLP figures come from other datasets. The last column is how "
        "often a model's 3-class answer (`class`) is the class its own predicted popularity falls in "
        "(`popularity_class`): models with a class head answer with two models, which can disagree.",
        "",
        _table(["model", "val acc. (3) %", "val F1 (3) %", "published acc. %", "published F1 %",
                "test acc. (3) %", "test F1 (3) %", "test F1 (2) %", "published F1 (2) %",
                "class = class of popularity %"], cls_rows),
        "",
        f"## Ranking of the top {pct} (Yu et al., ICASSP 2018)",
        "",
        f"Top {pct} of the test rows by true popularity (rows tied at the boundary kept together); nDCG over "
        f"the ranking by prediction with graded relevance (a top row's true popularity, others 0; perfect 1), "
        f"Kendall's tau-b and Spearman's rho within them (random ≈ 0). For scale only (another dataset): the Siamese CNN's best row reports nDCG "
        f"{SIAMESE_BEST['ndcg']}, Kendall {SIAMESE_BEST['kendall']}, Spearman {SIAMESE_BEST['spearman']}.",
        "",
        _table(["model", f"nDCG@{pct}", f"Kendall@{pct}", f"Spearman@{pct}"], rank_rows),
        "",
        "## Plots",
        "",
    ]
    captions = {"popularity": "Popularity of the training rows with a fitted normal (paper Fig. 3)",
                "learning_curves": "Learning curves per fold (MSE for MusicAENet and MusicPopNet, weighted "
                                   "cross-entropy for the 3-class MusicPopNet)",
                "tsne": "t-SNE of the autoencoder code of test rows, coloured by true class (paper Fig. 5)"}
    for key, name in plots.items():
        text += [f"![{captions[key]}]({name})", "", f"*{captions[key]}.*", ""]
    seconds = result.scores.groupby("model", sort=False)["seconds"].mean()
    text += ["## Fitting time per fold", "",
             _table(["model", "seconds"], [[m, f"{seconds[m]:.1f}"] for m in models]), ""]
    return "\n".join(text)


def plot_popularity(popularity: np.ndarray, path: Path) -> None:
    mu, sigma = stats.norm.fit(popularity)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(popularity, bins=np.arange(0, 102, 2), density=True, color="tab:gray", alpha=0.7, label="tracks")
    x = np.linspace(0, 100, 400)
    ax.plot(x, stats.norm.pdf(x, mu, sigma), color="tab:red", label=f"normal fit μ={mu:.1f}, σ={sigma:.1f}")
    ax.set_xlabel("popularity")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_learning_curves(result: CVResult, path: Path) -> None:
    configs = list(dict.fromkeys(name for name, _ in result.histories))
    stages = [("ae", "MusicAENet"), ("pop", "MusicPopNet (popularity)"), ("cls", "MusicPopNet (3 classes)")]
    stages = [s for s in stages if any(s[0] in h for h in result.histories.values())]
    fig, axes = plt.subplots(len(configs), len(stages), figsize=(4.5 * len(stages), 3 * len(configs)),
                             squeeze=False)
    for i, name in enumerate(configs):
        for j, (stage, title) in enumerate(stages):
            ax = axes[i, j]
            for (cfg, fold), hist in result.histories.items():
                if cfg != name or stage not in hist:
                    continue
                epochs = np.arange(1, len(hist[stage]) + 1)
                label = fold == 0
                ax.plot(epochs, [h["train_loss"] for h in hist[stage]], color="tab:blue", alpha=0.6,
                        label="train" if label else None)
                ax.plot(epochs, [h["val_loss"] for h in hist[stage]], color="tab:orange", alpha=0.6,
                        label="validation" if label else None)
            ax.set_title(f"{name}: {title}", fontsize=9)
            ax.set_xlabel("epoch")
            ax.set_yscale("log")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tsne(code: np.ndarray, classes: np.ndarray, title: str, path: Path, seed: int = 0) -> None:
    perplexity = float(min(30.0, max(2.0, (len(code) - 1) / 3)))
    xy = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(code)
    fig, ax = plt.subplots(figsize=(6, 5))
    for name in CLASS_NAMES:
        sel = classes == name
        ax.scatter(xy[sel, 0], xy[sel, 1], s=6, alpha=0.7, color=CLASS_COLOURS[name], label=f"{name} ({sel.sum()})")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_size_curve(curve: dict[int, dict[str, float]], path: Path, metric: str = "test MAE") -> None:
    """Test MAE against training rows, one line per model: ``curve`` is ``{training rows: {model: value}}``."""
    sizes = sorted(curve)
    models = list(dict.fromkeys(m for n in sizes for m in curve[n]))
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for m in models:
        xs = [n for n in sizes if m in curve[n]]
        ax.plot(xs, [curve[n][m] for n in xs], marker="o", label=m)
    ax.set_xscale("log")
    ax.set_xlabel("training rows")
    ax.set_ylabel(f"{metric} (popularity / 100)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(result: CVResult, out_dir: str | Path) -> Path:
    """Write ``report.md``, its PNG plots and ``scores.csv`` (every fold's metrics) to ``out_dir``;
    returns the Markdown file's path. The t-SNE is of the first configuration's code (t-SNE is slow)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = {"popularity": "popularity.png", "learning_curves": "learning_curves.png"}
    plot_popularity(result.train_popularity, out / plots["popularity"])
    if result.histories:
        plot_learning_curves(result, out / plots["learning_curves"])
    else:
        plots.pop("learning_curves")
    if result.codes:
        name, (code, classes) = next(iter(result.codes.items()))
        if len(code) >= 5:
            plots["tsne"] = "tsne.png"
            plot_tsne(code, classes, f"{name}: code of {len(code)} test rows",
                      out / plots["tsne"], result.settings["evaluate"]["seed"])
    result.scores.to_csv(out / "scores.csv", index=False)
    path = out / "report.md"
    path.write_text(markdown(result, plots))
    return path


def variants_markdown(result, source: str, tags: str) -> str:
    """The report of :func:`hitmodels.variants.cross_validate_variants`, shaped like Yu et al.'s Table 1, with
    their figures beside ours (``tags``: where the tag branch's inputs came from)."""
    means = result.means()
    published = {name: row for name, *row in YU_TABLE1}
    rows = []
    for name, m in means.items():
        t, sd = m["test"], m["test_sd"]
        pub = published.get(name)
        rows.append([name] + [f"{t[k]:.4f} ± {sd[k]:.4f}" for k in ("ndcg_top10", "kendall_top10", "spearman_top10")]
                    + [f"{t['mae']:.4f}", f"{result.seconds.get(name, 0.0) / result.n_folds:.0f}"]
                    + ([f"{pub[1]:.4f}", f"{pub[2]:.4f}", f"{pub[3]:.4f}"] if pub else ["", "", ""]))
    header = ["variant", "nDCG@10%", "Kendall@10%", "Spearman@10%", "MAE", "s / fold",
              "their nDCG@10%", "their Kendall@10%", "their Spearman@10%"]
    return "\n".join([
        f"# {result.family}: variants as Yu et al. (ICASSP 2018) evaluate them", "",
        f"Source: {source}; {result.n_rows} tracks, {result.n_folds} folds (each fold: one part tests, the next "
        f"validates, the other {result.n_folds - 2} fit; {result.split} parts). Mean ± standard deviation over the "
        "folds of each fold's test metrics. @10%: the top 10 % of a fold's test rows by true popularity; nDCG with "
        "graded relevance (a top row's relevance is its true popularity), Kendall's tau-b and Spearman's rho "
        "within that set. MAE on popularity / 100. Tag branch inputs: " + tags + ".", "",
        _table(header, rows), "",
        "Their figures are on KKBOX daily play counts of 15K songs, ours on this source: the comparison is of "
        "direction (does a variant help), not of level.", ""])
