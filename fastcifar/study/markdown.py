"""report.md: the compare report as text - tables per setting (accuracy, gaps, calibration and corruptions, the
lr choice), the conclusion, how to read it, and the runs - from the results dict (results.py)."""

from __future__ import annotations

from pathlib import Path

from fastcifar.config import TrainConfig, describe_augmentation
from fastcifar.data.datasets import DATASET_TITLES
from fastcifar.study.plots import PLOT_ALTS, plot_files
from fastcifar.study.sizing import describe as describe_sizing
from fastcifar.study.axes import interval_text, multiple_text, verdict_text
from fastcifar.study.results import ORIGINAL_STUDY, caveats, fraction_label


def pm(mean, std, scale=1.0, digits=2) -> str:
    if mean is None:
        return "-"
    text = f"{scale * mean:.{digits}f}"
    return text + (f" ± {scale * std:.{digits}f}" if std is not None else "")


def _results_table(results: dict) -> list[str]:
    lines = ["| training data | model | epochs | batch / lr | test loss | test accuracy (%) | time to train (s) "
             "| time to 90 % of final acc. (s) | seeds |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(results["summary"], key=lambda r: -r["fraction"]):
        lines.append(f"| {fraction_label(r['fraction'], r['n_train'])} | {r['label']} | {r['epochs']} | "
                     f"{r['batch_size']} / {r['lr']:g} | {pm(r['test_loss_mean'], r['test_loss_std'], digits=3)} | "
                     f"**{pm(r['test_acc_mean'], r['test_acc_std'], 100)}** | "
                     f"{pm(r['train_seconds_mean'], r['train_seconds_std'], digits=1)} | "
                     f"{pm(r['time_to_90pct_mean'], r['time_to_90pct_std'], digits=1)} | {r['n_seeds']} |")
    return lines


def _gap_table(results: dict) -> list[str]:
    n_train = {r["fraction"]: r["n_train"] for r in results["summary"]}
    lines = ["| training data | gap, pretrained − random (points) | 95 % CI, paired over seeds (df) | "
             "95 % CI, Welch's t (df) | verdict |", "|---|---:|---:|---:|---|"]
    for g in sorted(results["gaps"], key=lambda g: -g["fraction"]):
        welch = "-" if g["ci95_low_points"] is None else (
            f"{g['ci95_low_points']:+.2f} … {g['ci95_high_points']:+.2f} "
            f"({'-' if g['welch_df'] is None else format(g['welch_df'], '.1f')})")
        paired = "-" if g.get("paired_ci95_low_points") is None else (
            f"{g['paired_ci95_low_points']:+.2f} … {g['paired_ci95_high_points']:+.2f} "
            f"({'-' if g['paired_df'] is None else format(g['paired_df'], '.0f')})")
        if paired == "-" and g.get("pairing") not in (None, "verified"):
            paired = f"- (not paired: {g['pairing']})"
        lines.append(f"| {fraction_label(g['fraction'], n_train[g['fraction']])} | {g['gap_points']:+.2f} | "
                     f"{paired} | {welch} | {g['verdict']} |")
    return lines


def _lr_table(section: dict) -> list[str]:
    """How each arm's peak lr was chosen: every grid value's final validation accuracy, the winner in bold."""
    record = section["lr_selection"]
    if not record:
        return []
    lines = ["| model | peak lr: final validation accuracy (%) | chosen |", "|---|---|---:|"]
    for init, arm in record.items():
        cells = " · ".join(f"**{lr:g}: {100 * v:.1f}**" if lr == arm["chosen"] else f"{lr:g}: {100 * v:.1f}"
                           for lr, v in zip(arm["grid"], arm["val_acc"]))
        label = next(r["label"] for r in section["summary"] if r["init"] == init)
        lines.append(f"| {label} | {cells} | **{arm['chosen']:g}** |")
    arm = next(iter(record.values()))
    return ["### Learning rate, chosen per arm on the validation split", "", *lines, "",
            f"Each arm trained once per grid value (seed {arm['seed']}, {100 * arm['fraction']:g} % of the data, the "
            f"full epoch budget) and kept the value with the best final accuracy on its {arm['n_val']:,} validation "
            "images (ties: the smaller lr). **The test set played no part in the choice.** The chosen run is also "
            "that seed's and fraction's run in the tables above; smaller fractions scale the chosen lr with their "
            "batch.", ""]


def _robustness_tables(section: dict) -> list[str]:
    """What pretraining buys beyond top-1: calibration and corruption accuracy per arm, and their gaps."""
    rows = [r for r in section["summary"] if r.get("ece_mean") is not None]
    if not rows:
        return []
    n_train = {r["fraction"]: r["n_train"] for r in section["summary"]}
    lines = ["### Beyond top-1: calibration and corruption robustness (mean ± std over seeds)", "",
             "| training data | model | clean accuracy, no TTA (%) | ECE (%) | NLL | mean corruption accuracy (%) |",
             "|---|---|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: -r["fraction"]):
        lines.append(f"| {fraction_label(r['fraction'], r['n_train'])} | {r['label']} | "
                     f"{pm(r.get('clean_acc_no_tta_mean'), r.get('clean_acc_no_tta_std'), 100)} | "
                     f"{pm(r['ece_mean'], r['ece_std'], 100)} | {pm(r['nll_mean'], r['nll_std'], digits=3)} | "
                     f"{pm(r['mean_corruption_acc_mean'], r['mean_corruption_acc_std'], 100)} |")
    lines += ["", "| training data | metric | gap, pretrained − random | 95 % CI (paired, else Welch's t) | better is "
              "| verdict |", "|---|---|---:|---:|---|---|"]
    names = {"ece": "ECE (points)", "nll": "NLL", "mean_corruption_acc": "mean corruption accuracy (points)"}
    for g in sorted(section["robustness_gaps"], key=lambda g: (-g["fraction"], g["metric"])):
        ci = "-" if g["ci95_low"] is None else f"{g['ci95_low']:+.3f} … {g['ci95_high']:+.3f}"
        lines.append(f"| {fraction_label(g['fraction'], n_train[g['fraction']])} | {names[g['metric']]} | "
                     f"{g['gap']:+.3f} | {ci} | {g['better']} | {g['verdict']} |")
    lines += ["", *_corruption_table(section)]
    return lines + ["", "Evaluated on the final models with the test split only (fp32, no flip TTA; no training): "
                    "NLL and ECE (15 equal-width confidence bins) on the clean images; corruption accuracy averaged "
                    "over nine CIFAR-10-C corruptions (Hendrycks and Dietterich, ICLR 2019) at severities 1, 3 and 5, "
                    "generated from the test images (`fastcifar evaluate --precision fp32` measures any model the same "
                    "way; without --precision it serves in bf16 on a GPU).", ""]


def _corruption_table(section: dict) -> list[str]:
    table = section.get("corruption_acc")
    if not table:
        return []
    labels = {r["init"]: r["label"] for r in section["summary"]}
    severities, inits = table["severities"], section["inits"]
    header = " | ".join(f"{labels[i]} s{s}" for i in inits for s in severities)
    lines = ["Accuracy (%) per corruption and severity (s = severity), largest fraction, mean over seeds, no TTA:",
             "", f"| corruption | {header} |", "|---|" + "---:|" * (len(inits) * len(severities))]
    for name in table["accuracy"][inits[0]]:
        cells = [f"{100 * table['accuracy'][i][name][s]:.1f}" for i in inits for s in severities]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return lines


def _study_markdown(study: dict | None, setting: str) -> list[str]:
    """The axes beyond one gap for one setting: every arm and schedule at every noise level, their gaps (paired and
    Welch intervals), and what pretraining is worth in labelled images (study/axes.py)."""
    if not study:
        return []
    rows = [r for r in study["rows"] if r["setting"] == setting]
    gaps = [g for g in study["gaps"] if g["setting"] == setting]
    worth = [w for w in study["worth"] if w["setting"] == setting]
    lines = ["#### Every arm, schedule and label-noise level (mean ± std over seeds)", "",
             "| label noise | training data | model | epochs | test accuracy (%) | ECE (%) | NLL | time to train (s) "
             "| seeds |", "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["noise"], -r["fraction"])):
        lines.append(f"| {100 * r['noise']:g} % | {fraction_label(r['fraction'], r['n_train'])} | {r['label']} | "
                     f"{r['epochs']} | **{pm(r['test_acc_mean'], r['test_acc_std'], 100)}** | "
                     f"{pm(r['ece_mean'], r['ece_std'], 100)} | {pm(r['nll_mean'], r['nll_std'], digits=3)} | "
                     f"{pm(r['train_seconds_mean'], r['train_seconds_std'], digits=1)} | {r['n_seeds']} |")
    n_train = {r["fraction"]: r["n_train"] for r in rows}
    if gaps:
        lines += ["", "#### Gaps between the series (paired 95 % interval over seed pairs, Welch's beside it)", "",
                  "| label noise | training data | a − b | metric | gap (paired 95 % CI; Welch) | verdict |",
                  "|---:|---|---|---|---|---|"]
        for g in sorted(gaps, key=lambda g: (g["noise"], -g["fraction"], g["metric"] != "test_acc")):
            metric = "accuracy" if g["metric"] == "test_acc" else "ECE (lower is better)"
            lines.append(f"| {100 * g['noise']:g} % | {fraction_label(g['fraction'], n_train[g['fraction']])} | "
                         f"{study['labels'][g['a']]} − {study['labels'][g['b']]} | {metric} | {interval_text(g)} | "
                         f"{verdict_text(g, study['labels'])} |")
    if worth:
        lines += ["", "#### What pretraining is worth in labelled images", "",
                  "| label noise | pretrained arm | training data | its accuracy (%) | scratch needs | multiple |",
                  "|---:|---|---|---:|---:|---|"]
        for w in sorted(worth, key=lambda w: (w["noise"], w["pretrained"], w["fraction"])):
            need = {"=": "~", ">": "> ", "<=": "≤ "}[w["relation"]] + f"{w['images']:,.0f} images"
            lines.append(f"| {100 * w['noise']:g} % | {study['labels'][w['pretrained']]} | "
                         f"{fraction_label(w['fraction'], w['n_train'])} | {100 * w['target_acc']:.2f} | {need} | "
                         f"{multiple_text(w)} |")
        lines += ["", "The multiple is the training-set size at which scratch (the preset's epochs) reaches the "
                  "pretrained arm's mean accuracy, divided by that arm's training-set size: the scratch curve is "
                  "interpolated linearly in log(images) between measured fractions only, so 'more than' (scratch "
                  "never got there) and 'at most' (it was already there at the smallest fraction) mark the measured "
                  "range's ends; nothing is extrapolated. The interval is a percentile bootstrap over each point's "
                  "seeds (coarse with 2-3 seeds)."]
    return ["### Beyond two arms: every arm, schedule and label-noise level", "", *lines[:], ""]


def _section_markdown(section: dict, files: list[str], study: dict | None = None) -> list[str]:
    figures = [f"![{alt}]({name})" for alt, name in zip(PLOT_ALTS, files)]
    return [f"## {section['label']}", "",
            "### Test accuracy (mean ± std over seeds)", "", *_results_table(section), "",
            "### Accuracy gap", "", *_gap_table(section), "", *_robustness_tables(section),
            *_study_markdown(study, section["setting"]), *_lr_table(section),
            "### Figures", "", *[line for f in figures for line in (f, "")]]


def _wall_lines(results: dict) -> list[str]:
    wall = results.get("wall")
    lines = []
    if wall:
        # `invocations`: how many compare commands the study took (a killed or stopped one is continued by the next);
        # the seconds are all of theirs (compare.Invocations). Reports written before it counted the last one only.
        commands = wall.get("invocations", 1)
        what = "compare command" if commands == 1 else f"{commands} compare commands"
        lines += [f"Wall time of the {what} that wrote "
                  f"this report: {wall['seconds'] / 60:.1f} min on {results['machine']} ({wall['trained']} run(s) "
                  f"trained or resumed, {wall['reused']} reused finished; the robustness evaluation included).", ""]
    return lines


def _software_lines(sw: dict | None) -> list[str]:
    """The code and libraries that made the report, quoted once (every run's env.json has the same)."""
    if not sw:
        return []
    code = f"fastcifar at {(sw.get('git_sha') or 'an unknown commit')[:12]}" + (
        f" with uncommitted changes (diff sha256 {sw['git_diff_sha256'][:12]}; each run keeps it as git.diff)"
        if sw.get("git_dirty") else " (clean tree)" if sw.get("git_dirty") is False else "")
    libs = ", ".join(f"{k} {sw[k]}" for k in ("python", "torch", "torchvision", "cuda", "cudnn", "driver") if sw.get(k))
    return [f"Code: {code}. Libraries: {libs}.", ""]


def dataset_title(dataset: dict | None) -> str:
    """'CIFAR-10' (also for reports from before datasets were recorded), 'CIFAR-100', or the image folder's name."""
    if not dataset:
        return DATASET_TITLES["cifar10"]
    if dataset["kind"] == "folder":
        return f"the image folder '{Path(dataset['root']).name}'"
    return DATASET_TITLES[dataset["kind"]]


def _dataset_lines(dataset: dict | None) -> list[str]:
    if not dataset or dataset["kind"] == "cifar10":
        return []
    names = dataset["class_names"]
    shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
    line = (f"**Data:** {dataset_title(dataset)} at `{dataset['root']}`: {dataset['n_train']:,} training and "
            f"{dataset['n_test']:,} test images, {len(names)} classes ({shown}); test split: {dataset['test_source']}.")
    extra = [dataset["skipped_summary"]] if dataset.get("skipped_summary") else []
    extra += list(dataset.get("notes") or [])
    return [line + (" " + "; ".join(extra) + "." if extra else ""), ""]


def render_markdown(results: dict) -> str:
    cfg, base = results["config"], results["config"]["base"]
    runs = "\n".join(f"| `{r['run_dir']}` | {r['setting']} | {r['lr']:g} | {100 * r['test_acc']:.2f} | "
                     f"{r['test_loss']:.3f} | {r['train_seconds']:.1f} |" for r in results["runs"])
    lr = ("peak lr chosen per arm from " + ", ".join(f"{v:g}" for v in cfg["lr_grid"]) + " on the validation split"
          if cfg.get("lr_grid") else f"one shared peak lr {base['lr']:g}")
    if base.get("backbone_lr_scale", 1.0) != 1.0:
        lr += f" (the pretrained backbone at {base['backbone_lr_scale']:g}x the head's lr)"
    settings = "; ".join(s["label"] for s in results["sections"])
    names = plot_files([s["setting"] for s in results["sections"]])
    return "\n".join([
        f"# ImageNet-pretrained vs random init: {base['arch']} on {dataset_title(results.get('dataset'))} "
        f"({base['preset']} preset)", "",
        f"Made {results['created']} on {results['machine']}. Command: `{results['command']}`", "",
        *_dataset_lines(results.get("dataset")),
        *_software_lines(results.get("software")),
        *([f"**Sized to a time budget:** {describe_sizing(results['sizing'])}.", ""] if results.get("sizing") else []),
        f"**Pretrained arm:** {results['pretrained']['label']}. **Setting(s):** {settings}. **Recipe:** "
        f"{base['arch']}, {base['epochs']} epochs, SGD Nesterov, {lr} (batch {base['batch_size']}), "
        f"{base['warmup_epochs']:g}-epoch warm-up then {base['schedule']} decay, label smoothing "
        f"{base['label_smoothing']:g}, {100 * base['val_fraction']:g} % held out for validation, seeds "
        f"{', '.join(map(str, cfg['seeds']))}. **Augmentation:** {describe_augmentation(TrainConfig.from_dict(base).augmentation())}.", "",
        "## Conclusion", "", results["conclusion"], "",
        f"Original study (one run per model, 10 epochs, full data, 224 px with the ImageNet stem): "
        f"ImageNet-pretrained {ORIGINAL_STUDY['imagenet']} %, random init {ORIGINAL_STUDY['random']} %.", "",
        *[line for section, files in zip(results["sections"], names)
          for line in _section_markdown(section, files, results.get("study"))],
        "## How to read this", "",
        "- *setting* is the image size and stem both arms train at. At 32 px the CIFAR stem keeps the resolution "
        "but handicaps ImageNet features by design; at 224 px with the ImageNet stem they see images as they were "
        "learned (the original study's setting). Every table and figure sits under its setting's heading.",
        "- *std* is the sample standard deviation over seeds; a seed sets the random init (and the new classifier), "
        "the validation split, shuffling and augmentation - the same for both arms of a seed.",
        "- *gap* is mean(pretrained) − mean(random) in accuracy points. Both arms of a seed train on the same "
        "images, labels, order and augmentation (each run records digests of them; the report checks they match), "
        "so the verdict follows the paired 95 % interval over seed pairs (t on the per-seed differences, df = "
        "seeds − 1); Welch's t (unequal variances, as if the seeds were independent) stands beside it. 'within "
        "noise' means the interval includes 0. With few seeds the t quantile is large (12.7 at df 1, 4.3 at df 2, "
        "2.8 at df 4), so only large gaps can be told from noise.",
        "- *training data* is the first N training images of the pool (then the validation split); a small fraction "
        f"trains with a smaller batch (lr scaled with it) so an epoch keeps at least "
        f"{base['min_steps_per_epoch']} steps.",
        "- *time to train* counts the training loop only (evaluation and compile warm-up excluded); *time to 90 %* "
        "is the training time until the test accuracy, measured after each epoch, first reached 90 % of that run's "
        "final accuracy; '-' when no epoch before the last got there.",
        f"- {caveats(results)[-1]}", "",
        *_wall_lines(results),
        "## Runs", "", "| run directory | setting | peak lr | test acc (%) | test loss | train s |",
        "|---|---|---:|---:|---:|---:|", runs, "",
    ])
