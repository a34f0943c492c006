"""The compare report's figures, one set per setting: accuracy curves, data efficiency, per-class accuracy,
confusion matrices, accuracy under corruption, reliability diagrams - drawn from the results dict (results.py)
with matplotlib's object API (no global pyplot state) and written atomically."""

from __future__ import annotations

from pathlib import Path

from fastcifar.fileio import atomic_file
from fastcifar.study.axes import multiple_text, series_label
from fastcifar.study.results import fraction_label, timing_caveat

STYLE = {"imagenet": dict(color="#1f77b4", marker="o"), "random": dict(color="#d62728", marker="s"),
         "probe": dict(color="#2ca02c", marker="^")}
PLOTS = ("curves.png", "data_efficiency.png", "per_class.png", "confusion.png", "robustness.png",
         "reliability.png", "compute.png", "label_noise.png")  # one setting's figures
PLOT_ALTS = ("test accuracy vs epoch and training time", "final accuracy vs training-set size",
             "per-class accuracy", "confusion matrices", "accuracy vs corruption severity",
             "reliability diagrams", "accuracy vs training time, every arm and schedule",
             "accuracy and calibration under label noise")


def style(series: str) -> dict:
    """An arm's colour and marker; the scratch arm's longer schedules dashed and lighter."""
    init, _, k = series.partition("-x")
    return dict(STYLE[init], linestyle="--", alpha=0.8) if k else dict(STYLE[init])

NOT_EVALUATED = "not evaluated (--robustness-severities none)"


def _save(fig, path: Path) -> Path:
    with atomic_file(path) as fh:
        fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")
    return path


def _band(ax, x, ys, init: str, label: str, points: bool = False) -> None:
    """Mean line and ± 1 std band over seeds; with `points`, each seed's value as a dot too."""
    import numpy as np

    ys = np.asarray(ys, dtype=float) * 100
    mean = ys.mean(axis=0)
    ax.plot(x, mean, label=f"{label} (n={len(ys)})", **STYLE[init])
    if points:
        for y in ys:
            ax.scatter(x, y, s=12, color=STYLE[init]["color"], alpha=0.6, zorder=3)
    if len(ys) > 1:
        std = ys.std(axis=0, ddof=1)
        ax.fill_between(x, mean - std, mean + std, color=STYLE[init]["color"], alpha=0.2, linewidth=0)


def plot_curves(results: dict, path: Path) -> Path:
    """Test accuracy vs epoch and vs training seconds, one row per fraction; band = ± 1 std over seeds."""
    import numpy as np
    from matplotlib.figure import Figure

    fractions = sorted({r["fraction"] for r in results["runs"]}, reverse=True)
    busy = bool(timing_caveat(results["runs"]))
    fig = Figure(figsize=(11, 3.4 * len(fractions)), layout="constrained")
    axes = fig.subplots(len(fractions), 2, squeeze=False)
    for row, fraction in zip(axes, fractions):
        for init in results["inits"]:
            curves = [r["curve"] for r in results["runs"] if r["init"] == init and r["fraction"] == fraction]
            seconds = np.mean([c["elapsed_train_seconds"] for c in curves], axis=0)
            accs = [c["test_acc"] for c in curves]
            _band(row[0], curves[0]["epoch"], accs, init, results["labels"][init])
            _band(row[1], seconds, accs, init, results["labels"][init])
        n_train = next(r["n_train"] for r in results["runs"] if r["fraction"] == fraction)
        time_label = "training time (s, mean over seeds; evaluation excluded)" + (
            "\nmachine busy (equal runs' times differ > 2x): these times measure the load, not the inits"
            if busy else "")
        for ax, xlabel in zip(row, ("epoch", time_label)):
            ax.set(xlabel=xlabel, ylabel="test accuracy (%)",
                   title=f"training data: {fraction_label(fraction, n_train)}")
            ax.grid(alpha=0.3)
        row[0].xaxis.get_major_locator().set_params(integer=True)
        row[0].legend(loc="lower right", fontsize=9)
    fig.suptitle("Test accuracy during training (line: mean over seeds, band: ± 1 std)")
    return _save(fig, path)


def plot_data_efficiency(results: dict, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    nudges = (0.97, 1.0, 1.03) if len(results["inits"]) == 3 else (0.97, 1.03)
    for init, nudge in zip(results["inits"], nudges):  # a small sideways nudge keeps the error bars apart
        rows = sorted((r for r in results["summary"] if r["init"] == init), key=lambda r: r["fraction"])
        ax.errorbar([r["fraction"] * nudge for r in rows], [100 * r["test_acc_mean"] for r in rows],
                    yerr=[100 * (r["test_acc_std"] or 0) for r in rows], capsize=4, label=results["labels"][init],
                    **STYLE[init])
        seeds = [r for r in results["runs"] if r["init"] == init]  # every seed's run as a dot
        ax.scatter([r["fraction"] * nudge for r in seeds], [100 * r["test_acc"] for r in seeds], s=12,
                   color=STYLE[init]["color"], alpha=0.6, zorder=3)
    rows = sorted((r for r in results["summary"] if r["init"] == "random"), key=lambda r: r["fraction"])
    ax.set_xscale("log")
    ax.set_xticks([r["fraction"] for r in rows], [f"{100 * r['fraction']:g} %\n{r['n_train']:,} img" for r in rows])
    ax.minorticks_off()
    ax.set(xlabel="training-set fraction (log scale; images after the validation split)",
           ylabel="final test accuracy (%)", title="Data efficiency (mean ± 1 std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    worth = [w for w in (results.get("study") or {}).get("worth", [])
             if w["setting"] == results["setting"] and not w["noise"] and w["pretrained"] == results["pretrained"]]
    if worth:  # what pretraining is worth in labelled images, per fraction (study/axes.py)
        text = "\n".join(f"{100 * w['fraction']:g} %: worth {multiple_text(w)}" for w in worth)
        # under the axes: inside them it would cover the curves or the legend
        ax.text(0.0, -0.22, f"{results['labels'][results['pretrained']]} vs scratch, in labelled images:\n{text}",
                transform=ax.transAxes, va="top", fontsize=8)
    return _save(fig, path)


def plot_per_class(results: dict, path: Path) -> Path:
    import numpy as np
    from matplotlib.figure import Figure

    per = results["per_class"]
    names = per["random"]["class_names"]
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax = fig.subplots()
    inits = results["inits"]
    x, width = np.arange(len(names)), 0.8 / len(inits)
    for i, init in enumerate(inits):
        p = per[init]
        mean = np.asarray(p["acc_mean_pct"])
        std = np.asarray(p["acc_std_pct"] if p["acc_std_pct"] is not None else np.zeros_like(mean))
        # The std bar is clipped to 0..100 %: an accuracy cannot leave that range, however few the seeds.
        yerr = np.stack([np.minimum(std, mean), np.minimum(std, 100 - mean)])
        ax.bar(x + (i - (len(inits) - 1) / 2) * width, mean, width, yerr=yerr, capsize=3, color=STYLE[init]["color"],
               label=f"{results['labels'][init]} (n={p['n_seeds']})")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_yticks(range(0, 101, 20))
    ax.set(ylabel="test accuracy (%)", ylim=(0, 118),
           title=f"Per-class test accuracy, {100 * per['random']['fraction']:g} % of the training data "
                 "(mean ± 1 std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", ncol=len(inits), frameon=False)  # in the headroom above 100 %, clear of the bars
    return _save(fig, path)


def plot_confusion(results: dict, path: Path) -> Path:
    import numpy as np
    from matplotlib.figure import Figure

    inits = results["inits"]
    fig = Figure(figsize=(7.5 * len(inits), 6.6), layout="constrained")
    axes = fig.subplots(1, len(inits))
    for ax, init in zip(axes, inits):
        p = results["per_class"][init]
        counts = np.asarray(p["confusion_sum"], dtype=float)
        pct = 100 * counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        image = ax.imshow(pct, cmap="Blues", vmin=0, vmax=100)
        for (i, j), v in np.ndenumerate(pct):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8, color="white" if v > 60 else "black")
        names = p["class_names"]
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set(xlabel="predicted class", ylabel="true class",
               title=f"{results['labels'][init]}: {np.trace(counts) / counts.sum():.1%} correct")
    fig.colorbar(image, ax=axes, shrink=0.8, label="% of the true class (rows sum to 100)")
    fig.suptitle(f"Confusion matrices, {100 * p['fraction']:g} % of the training data, summed over "
                 f"{p['n_seeds']} seeds")
    return _save(fig, path)


def plot_robustness(results: dict, path: Path) -> Path:
    """Accuracy (mean over corruptions and seeds) against severity, both arms, the largest fraction; clean at 0."""
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    top = max(r["fraction"] for r in results["runs"])
    for init in results["inits"]:
        runs = [r for r in results["runs"] if r["init"] == init and r["fraction"] == top and r.get("corruption_acc")]
        if not runs:
            continue
        severities = sorted({int(s) for r in runs for by in r["corruption_acc"].values() for s in by})
        # Severity 0 is the clean accuracy measured the same way as the corrupted points (no flip TTA), so the
        # drop to severity 1 is the corruption's alone; test_acc (with TTA) would overstate it by ~2 points.
        per_seed = [[r["clean_acc_no_tta"]] + [np.mean([by[str(s)] for by in r["corruption_acc"].values()])
                                               for s in severities] for r in runs]  # fractions: _band draws %
        _band(ax, [0, *severities], per_seed, init, results["labels"][init], points=True)
    ax.set(xlabel="corruption severity (0: clean test images; every point without TTA)",
           ylabel="accuracy (%), mean over 9 corruptions", title="Accuracy under corruption, largest fraction")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    else:
        ax.text(0.5, 0.5, NOT_EVALUATED, ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)


def plot_reliability(results: dict, path: Path) -> Path:
    """Reliability diagrams side by side: accuracy per confidence bin, summed over seeds, the largest fraction."""
    import numpy as np
    from matplotlib.figure import Figure

    inits = results["inits"]
    fig = Figure(figsize=(5.5 * len(inits), 4.8), layout="constrained")
    axes = fig.subplots(1, len(inits), sharey=True)
    top = max(r["fraction"] for r in results["runs"])
    for ax, init in zip(axes, inits):
        runs = [r for r in results["runs"] if r["init"] == init and r["fraction"] == top and r.get("reliability")]
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ax.set(xlabel="confidence (top-1 probability)", xlim=(0, 1), ylim=(0, 1), title=results["labels"][init])
        if not runs:
            ax.text(0.5, 0.5, NOT_EVALUATED, ha="center", va="center", transform=ax.transAxes)
            continue
        count = np.sum([r["reliability"]["count"] for r in runs], axis=0)
        correct = np.sum([[0 if a is None else a * n for a, n in zip(r["reliability"]["accuracy"],
                                                                    r["reliability"]["count"])] for r in runs], axis=0)
        edges = runs[0]["reliability"]["edges"]
        centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
        acc = np.divide(correct, count, out=np.zeros_like(correct, dtype=float), where=count > 0)
        ax.bar(centres, acc, width=(edges[1] - edges[0]) * 0.95, color=STYLE[init]["color"])
        for x, y, n in zip(centres, acc, count):  # how many images each bar stands on (as evaluate's plot shows)
            if n:
                ax.text(x, min(y + 0.02, 0.97), f"{int(n)}", ha="center", va="bottom", fontsize=6, rotation=90)
        ece = np.mean([r["ece"] for r in runs])
        ax.text(0.04, 0.92, f"ECE {100 * ece:.2f} % (mean of {len(runs)} seeds)", transform=ax.transAxes)
    axes[0].set(ylabel="accuracy in bin")
    fig.suptitle("Reliability diagrams, clean test images, largest fraction (bars below the diagonal: overconfident)")
    return _save(fig, path)


def plot_compute(results: dict, path: Path) -> Path:
    """Final test accuracy against training time, clean labels: every arm and schedule (the scratch arm's longer
    ones dashed), one point per fraction (mean over seeds, ± 1 std both ways). Does random init catch up with k
    times the compute, and what does each arm's accuracy cost?"""
    from matplotlib.figure import Figure

    rows = [r for r in (results.get("study") or {}).get("rows", [])
            if r["setting"] == results["setting"] and not r["noise"]]
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.subplots()
    for series in sorted({r["series"] for r in rows}):
        points = sorted((r for r in rows if r["series"] == series), key=lambda r: r["fraction"])
        ax.errorbar([r["train_seconds_mean"] for r in points], [100 * r["test_acc_mean"] for r in points],
                    xerr=[r["train_seconds_std"] or 0 for r in points],
                    yerr=[100 * (r["test_acc_std"] or 0) for r in points], capsize=3,
                    label=series_label(series, results["labels"]), **style(series))
        for r in points:
            ax.annotate(f"{100 * r['fraction']:g} %", (r["train_seconds_mean"], 100 * r["test_acc_mean"]),
                        textcoords="offset points", xytext=(4, -10), fontsize=7)
    busy = timing_caveat(results.get("all_runs") or results["runs"])
    ax.set_xscale("log")
    ax.set(xlabel="training time per run (s, log scale; mean over seeds)" + (
        "\nmachine busy (equal runs' times differ > 2x): these times measure the load" if busy else ""),
        ylabel="final test accuracy (%)", title="Accuracy against training time, clean labels (point: a fraction)")
    ax.grid(alpha=0.3)
    if rows:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_label_noise(results: dict, path: Path) -> Path:
    """Test accuracy and ECE against the share of noisy training labels (clean test set), each arm at the preset's
    schedule, the largest fraction, mean ± 1 std over seeds."""
    from matplotlib.figure import Figure

    study = results.get("study") or {}
    rows = [r for r in study.get("rows", []) if r["setting"] == results["setting"] and "-x" not in r["series"]]
    top = max((r["fraction"] for r in rows), default=None)
    rows = [r for r in rows if r["fraction"] == top]
    fig = Figure(figsize=(11, 4.3), layout="constrained")
    axes = fig.subplots(1, 2)
    levels = sorted({r["noise"] for r in rows})
    for series in [s for s in ("imagenet", "probe", "random") if any(r["series"] == s for r in rows)]:
        points = sorted((r for r in rows if r["series"] == series), key=lambda r: r["noise"])
        x = [100 * r["noise"] for r in points]
        for ax, key in zip(axes, ("test_acc", "ece")):
            if all(r[f"{key}_mean"] is not None for r in points):
                ax.errorbar(x, [100 * r[f"{key}_mean"] for r in points],
                            yerr=[100 * (r[f"{key}_std"] or 0) for r in points], capsize=3,
                            label=series_label(series, results["labels"]), **style(series))
    for ax, ylabel in zip(axes, ("test accuracy (%)", "ECE (%), lower is better")):
        ax.set(xlabel="noisy training labels (%; the test set is clean)", ylabel=ylabel)
        ax.grid(alpha=0.3)
        if len(levels) < 2:
            ax.text(0.5, 0.5, "one label-noise level (--label-noise 0,0.2,0.4 adds more)", ha="center",
                    va="center", transform=ax.transAxes)
        elif ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    n_train = rows[0]["n_train"] if rows else 0
    fig.suptitle("Label noise" + (f", {fraction_label(top, n_train)} (mean ± 1 std over seeds)" if rows else ""))
    return _save(fig, path)


PLOTTERS = (plot_curves, plot_data_efficiency, plot_per_class, plot_confusion, plot_robustness, plot_reliability,
            plot_compute, plot_label_noise)


def plot_files(settings: list[str]) -> list[list[str]]:
    """Each setting's plot file names: PLOTS for a single setting, else PLOTS with '-<setting>' before '.png'."""
    if len(settings) == 1:
        return [list(PLOTS)]
    return [[name.replace(".png", f"-{setting}.png") for name in PLOTS] for setting in settings]
