"""The compare report: numbers from finished runs -> results.json, report.md and four plots per setting.

Owns what `fastcifar compare` writes once its runs are done: per-run records read back from each run directory
(summary.json, metrics.jsonl), one section per setting (image size + stem) with mean ± std over seeds per
(init, fraction), the pretrained-minus-random gap with a Welch 95 % interval (`fastcifar.study.stats`) and the learning
rate each arm chose on the validation split, the conclusion paragraph generated from those numbers, the plots
(curves, data efficiency, per-class accuracy, confusion matrices) and the terminal summary. Everything printed
or drawn is also in results.json.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from fastcifar.config import COMPARE_INITS, MIN_STEPS_PER_EPOCH, setting_name
from fastcifar.fileio import atomic_path, write_json, write_text
from fastcifar.study.stats import mean_std, verdict, welch_ci
from fastcifar.rundir import ARM_LABELS, ROBUSTNESS_FILE, read_metrics, read_summary

FORMAT_VERSION = 2  # 2: per-setting sections, lr_selection, run warnings
ORIGINAL_STUDY = {"imagenet": 93.69, "random": 94.05}  # one 10-epoch run per model, test accuracy in %
STYLE = {"imagenet": dict(color="#1f77b4", marker="o"), "random": dict(color="#d62728", marker="s")}
PLOTS = ("curves.png", "data_efficiency.png", "per_class.png", "confusion.png", "robustness.png",
         "reliability.png")  # one setting's figures
PLOT_ALTS = ("test accuracy vs epoch and training time", "final accuracy vs training-set size",
             "per-class accuracy", "confusion matrices", "accuracy vs corruption severity",
             "reliability diagrams")
def arm_labels(source: dict) -> dict:
    pretrained = "ImageNet-pretrained" if source.get("verified_imagenet") else ARM_LABELS[source["kind"]]
    return {"imagenet": pretrained, "random": "random init"}


def fraction_label(fraction: float, n_train: int) -> str:
    return f"{100 * fraction:g} % ({n_train:,} images)"


# ---------------------------------------------------------------------------------------------- numbers


def _run_record(run, out: Path) -> dict:
    summary, metrics = read_summary(run.run_dir) or {}, read_metrics(run.run_dir)
    keys = ("epochs", "n_train", "n_test", "test_acc", "test_loss", "val_acc", "train_seconds",
            "time_to_90pct_final_test_acc", "images_per_second", "device", "per_class_test_acc", "confusion",
            "class_names")
    return {"name": run.name, "init": run.init, "fraction": run.fraction, "seed": run.seed,
            "setting": setting_name(run.setting), "image_size": run.setting[0], "stem": run.setting[1],
            "run_dir": os.path.relpath(run.run_dir, out), "train_limit": run.cfg.train_limit,
            "batch_size": run.cfg.batch_size, "lr": run.cfg.lr, **{k: summary.get(k) for k in keys},
            "warnings": summary.get("warnings") or [],
            "curve": {k: [m.get(k) for m in metrics] for k in ("epoch", "test_acc", "elapsed_train_seconds")},
            **_robustness_record(run.run_dir)}


def _robustness_record(run_dir: Path) -> dict:
    """ece, nll, brier (clean, no TTA), corruption_acc per corruption and severity, mean_corruption_acc and the
    clean reliability bins, from the run's robustness.json (compare writes it; absent: all None)."""
    path = run_dir / ROBUSTNESS_FILE
    if not path.is_file():
        return {"ece": None, "nll": None, "brier": None, "corruption_acc": None, "mean_corruption_acc": None,
                "reliability": None, "clean_acc_no_tta": None}
    r = json.loads(path.read_text())
    return {"ece": r["clean"]["ece"], "nll": r["clean"]["nll"], "brier": r["clean"]["brier"],
            "clean_acc_no_tta": r["clean"]["accuracy"],  # the protocol of the corruption accuracies (test_acc: TTA)
            "corruption_acc": {name: {sev: v["accuracy"] for sev, v in by.items()}
                               for name, by in r["corruptions"].items()},
            "mean_corruption_acc": r["mean_corruption_acc"], "reliability": r["clean"]["reliability"]}


def _spread(records: list[dict], key: str) -> tuple[float | None, float | None]:
    return mean_std([r[key] for r in records if r.get(key) is not None])


def _summary_row(init: str, fraction: float, records: list[dict], label: str) -> dict:
    first = records[0]
    row = {"setting": first["setting"], "init": init, "label": label, "fraction": fraction,
           "train_limit": first["train_limit"],
           "n_train": first["n_train"], "batch_size": first["batch_size"], "lr": first["lr"],
           "epochs": first["epochs"], "n_seeds": len(records), "seeds": [r["seed"] for r in records]}
    for key, name in (("test_acc", "test_acc"), ("test_loss", "test_loss"), ("train_seconds", "train_seconds"),
                      ("time_to_90pct_final_test_acc", "time_to_90pct"), ("ece", "ece"), ("nll", "nll"),
                      ("mean_corruption_acc", "mean_corruption_acc"), ("clean_acc_no_tta", "clean_acc_no_tta")):
        row[f"{name}_mean"], row[f"{name}_std"] = _spread(records, key)
    return row


ROBUSTNESS_METRICS = {  # key -> (scale, what a better model has)
    "ece": (100, "lower"), "nll": (1, "lower"), "mean_corruption_acc": (100, "higher")}


def _metric_gap(fraction: float, records: list[dict], key: str) -> dict | None:
    """pretrained - random on one robustness metric with the same Welch interval as accuracy (None: no data)."""
    scale, better = ROBUSTNESS_METRICS[key]
    values = {init: [scale * r[key] for r in records if r["init"] == init and r.get(key) is not None]
              for init in COMPARE_INITS}
    if not values["imagenet"] or not values["random"]:
        return None
    ci = welch_ci(values["imagenet"], values["random"])
    return {"setting": records[0]["setting"], "fraction": fraction, "metric": key, "better": better,
            "gap": mean_std(values["imagenet"])[0] - mean_std(values["random"])[0],
            "ci95_low": ci.low if ci else None, "ci95_high": ci.high if ci else None, "verdict": verdict(ci)}


def _gap_row(fraction: float, records: list[dict]) -> dict:
    acc = {init: [100 * r["test_acc"] for r in records if r["init"] == init] for init in COMPARE_INITS}
    ci = welch_ci(acc["imagenet"], acc["random"])
    gap = mean_std(acc["imagenet"])[0] - mean_std(acc["random"])[0]
    return {"setting": records[0]["setting"], "fraction": fraction, "gap_points": gap,
            "ci95_low_points": ci.low if ci else None,
            "ci95_high_points": ci.high if ci else None, "welch_df": ci.df if ci else None,
            "se_points": ci.se if ci else None, "n_imagenet": len(acc["imagenet"]), "n_random": len(acc["random"]),
            "verdict": verdict(ci)}


def _per_class(records: list[dict]) -> dict:
    import numpy as np

    acc = np.array([r["per_class_test_acc"] for r in records], dtype=float) * 100
    std = acc.std(axis=0, ddof=1).tolist() if len(records) > 1 else None
    return {"fraction": records[0]["fraction"], "n_seeds": len(records), "class_names": records[0]["class_names"],
            "acc_mean_pct": acc.mean(axis=0).tolist(), "acc_std_pct": std,
            "confusion_sum": np.sum([r["confusion"] for r in records], axis=0).tolist()}


def machine(env: dict) -> str:
    if env.get("gpus"):
        return f"{env['gpus'][0]['name']} GPU (x{len(env['gpus'])})"
    return f"CPU only ({env.get('cpu')}, {env.get('cpu_count')} cores; no GPU)"


def setting_label(setting: str) -> str:
    """'32px-cifar' -> '32 px, CIFAR stem (3x3/1)'."""
    size, stem = setting.split("px-")
    return f"{size} px, {'CIFAR stem (3x3/1, no max-pool)' if stem == 'cifar' else 'ImageNet stem (7x7/2 + max-pool)'}"


def collect(cfg, source: dict, runs: list, env: dict, lr_selection: dict | None = None,
            wall: dict | None = None) -> dict:
    """Every number of the report, read from the finished run directories of `runs`; `wall`: the compare
    command's own wall seconds and how many runs it trained vs reused."""
    results = summarize(cfg.to_dict(), source, [_run_record(run, Path(cfg.out)) for run in runs], env, lr_selection)
    results["wall"] = wall
    return results


def _section(setting: str, records: list[dict], labels: dict, lr_selection: dict | None) -> dict:
    """One setting's tables: rows per (init, fraction), gaps per fraction, per-class figures, the lr choice."""
    def select(init, fraction):
        return [r for r in records if r["init"] == init and r["fraction"] == fraction]

    fractions = sorted({r["fraction"] for r in records})
    return {"setting": setting, "label": setting_label(setting),
            "summary": [_summary_row(init, f, select(init, f), labels[init]) for f in fractions
                        for init in COMPARE_INITS],
            "gaps": [_gap_row(f, [r for r in records if r["fraction"] == f]) for f in fractions],
            "per_class": {init: _per_class(select(init, fractions[-1])) for init in COMPARE_INITS},
            "robustness_gaps": [g for f in fractions for key in ROBUSTNESS_METRICS
                                if (g := _metric_gap(f, [r for r in records if r["fraction"] == f], key))],
            "corruption_acc": _corruption_means(records), "lr_selection": lr_selection}


def summarize(config: dict, source: dict, records: list[dict], env: dict, lr_selection: dict | None = None) -> dict:
    """results.json's content from per-run records (one per (setting, init, fraction, seed)).

    `sections` holds one block per setting; `summary` and `gaps` list every section's rows (each names its
    setting) for scripts that want one table; `lr_selection` maps setting -> arm -> grid / val_acc / chosen.
    """
    labels = arm_labels(source)
    settings = list(dict.fromkeys(r["setting"] for r in records))
    sections = [_section(s, [r for r in records if r["setting"] == s], labels, (lr_selection or {}).get(s))
                for s in settings]
    n_test = records[0]["n_test"]
    top = max(r["fraction"] for r in records)
    p = _spread([r for r in records if r["init"] == "random" and r["fraction"] == top], "test_acc")[0]
    results = {
        "format_version": FORMAT_VERSION, "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(env), "command": env.get("command_line"), "config": config,
        "pretrained": source, "labels": labels,
        "test_set": {"n_test": n_test, "binomial_se_points": 100 * math.sqrt(p * (1 - p) / n_test)},
        "sections": sections, "summary": [row for s in sections for row in s["summary"]],
        "gaps": [g for s in sections for g in s["gaps"]], "lr_selection": lr_selection,
        "original_study_test_acc_pct": ORIGINAL_STUDY, "runs": records,
    }
    results["conclusion"] = conclusion(results)
    return results


# ---------------------------------------------------------------------------------------------- words


def _ci_text(g: dict) -> str:
    return f"95 % CI {g['ci95_low_points']:+.2f} to {g['ci95_high_points']:+.2f}"


GAP_SENTENCES = {
    "pretrained ahead": lambda g: f"pretrained is ahead by {g['gap_points']:.2f} points ({_ci_text(g)})",
    "random ahead": lambda g: f"random init is ahead by {-g['gap_points']:.2f} points ({_ci_text(g)})",
    "within noise": lambda g: f"the gap of {g['gap_points']:+.2f} points is within noise ({_ci_text(g)} includes 0)",
    "no CI": lambda g: (f"the gap is {g['gap_points']:+.2f} points from a single seed per arm, so no confidence "
                        "interval is possible and it is not evidence either way"),
}


def _overall_sentence(results: dict) -> str:
    gaps = results["gaps"]
    pct = {v: [f"{100 * g['fraction']:g} %" for g in gaps if g["verdict"] == v] for v in GAP_SENTENCES}
    if len(pct["no CI"]) == len(gaps):
        return "With one seed per arm these numbers cannot separate the two inits from seed noise (use --seeds 3+)."
    if not pct["pretrained ahead"] and not pct["random ahead"]:
        widths = [g["ci95_high_points"] - g["ci95_low_points"] for g in gaps if g["ci95_low_points"] is not None]
        return ("The numbers support no difference between the inits at any fraction tried: every 95 % interval "
                f"includes 0. That is not proof they are equal - the intervals are up to {max(widths):.1f} points "
                "wide; more seeds narrow them.")
    parts = [f"a real advantage for {who} at {', '.join(pct[v])} of the data" for v, who in
             (("pretrained ahead", "ImageNet pretraining"), ("random ahead", "random init")) if pct[v]]
    return "The numbers support " + " and ".join(parts) + "; any other gap is within noise."


def _caveats(results: dict) -> list[str]:
    source, notes = results["pretrained"], []
    if source["kind"] == "stand-in":
        notes.append("No ImageNet weights were available, so the 'pretrained' arm started from stand-in random "
                     "weights: this report checks the pipeline and the noise level, and says nothing about ImageNet "
                     "pretraining. Its arms still differ in more than chance: the stand-in arm starts every seed "
                     "from one fixed weights file (torchvision's default init, seed 1234) and normalises with "
                     "ImageNet's mean/std, the random arm draws a fresh init per seed and normalises with "
                     "CIFAR-10's, so a gap here is not a pure seed-noise (A/A) measurement.")
    elif not source.get("verified_imagenet"):
        notes.append(f"The pretrained arm used {source['label']}; unless that file holds ImageNet weights in another "
                     "form, this report says nothing about ImageNet pretraining.")
    best = max(r["test_acc_mean"] for r in results["summary"])
    if best < 0.85:
        notes.append(f"Both arms are far from converged (best mean test accuracy {100 * best:.1f} %): this budget "
                     "checks the pipeline; the study's question needs the GPU budget (the original 10-epoch runs "
                     "reached ~94 %).")
    notes += _warnings_caveat(results["runs"]) + _timing_caveat(results["runs"])
    ts = results["test_set"]
    notes.append(f"The test set has {ts['n_test']:,} images: one model's accuracy carries a binomial standard error "
                 f"of about ±{ts['binomial_se_points']:.2f} points.")
    return notes


def _warnings_caveat(runs: list[dict]) -> list[str]:
    warned = [r["name"] for r in runs if r.get("warnings")]
    if not warned:
        return []
    return [f"{len(warned)} run(s) warned that their training loss was above chance after the first epoch or the "
            f"warm-up, the mark of a blown-up start ({', '.join(warned[:4])}{' ...' if len(warned) > 4 else ''}; "
            "see each run's summary.json): their accuracy understates what the arm can do."]


def _timing_caveat(runs: list[dict]) -> list[str]:
    """Flag a busy machine: runs of the same size whose training times differ by more than 2x."""
    spreads = []
    for setting, fraction in {(r["setting"], r["fraction"]) for r in runs}:
        seconds = [r["train_seconds"] for r in runs
                   if (r["setting"], r["fraction"]) == (setting, fraction) and r["train_seconds"]]
        spreads.append(max(seconds) / min(seconds) if seconds else 1.0)
    if max(spreads, default=1.0) <= 2.0:
        return []
    return [f"Training times of equally sized runs differ up to {max(spreads):.1f}x, so the machine was busy with "
            "other work: the time columns measure that, not the inits."]


def _seeds_text(n: int) -> str:
    return "one seed" if n == 1 else f"mean of {n} seeds"


def _findings(section: dict, name_setting: bool, runs: list[dict]) -> list[str]:
    """What one setting's numbers support, per fraction (largest first), then overall and time to 90 %."""
    rows = {(r["init"], r["fraction"]): r for r in section["summary"]}
    sentences = []
    for g in sorted(section["gaps"], key=lambda g: -g["fraction"]):
        pre, rnd = rows["imagenet", g["fraction"]], rows["random", g["fraction"]]
        sentences.append(f"With {fraction_label(g['fraction'], pre['n_train'])} for training, "
                         f"{pre['label']} reaches {100 * pre['test_acc_mean']:.2f} % and random init "
                         f"{100 * rnd['test_acc_mean']:.2f} % ({_seeds_text(pre['n_seeds'])}): "
                         f"{GAP_SENTENCES[g['verdict']](g)}.")
    sentences.append(_overall_sentence(section))
    top = max(section["gaps"], key=lambda g: g["fraction"])["fraction"]
    pre, rnd = rows["imagenet", top], rows["random", top]
    busy = bool(_timing_caveat(runs))  # times measured on a busy machine are not a speed result
    if pre["time_to_90pct_mean"] is not None and rnd["time_to_90pct_mean"] is not None and not busy:
        sentences.append(f"With the most training data, pretrained reaches 90 % of its final accuracy after "
                         f"{pre['time_to_90pct_mean']:.1f} s of training, random init after "
                         f"{rnd['time_to_90pct_mean']:.1f} s.")
    if name_setting:
        sentences[0] = f"At {section['label']}: {sentences[0][0].lower()}{sentences[0][1:]}"
    return sentences


def conclusion(results: dict) -> str:
    """One paragraph stating what the numbers support, per setting and fraction, then its caveats."""
    named = len(results["sections"]) > 1
    return " ".join([s for section in results["sections"] for s in
                     _findings(section, named, [r for r in results["runs"] if r["setting"] == section["setting"]])]
                    + _caveats(results))


# ---------------------------------------------------------------------------------------------- markdown


def _pm(mean, std, scale=1.0, digits=2) -> str:
    if mean is None:
        return "-"
    text = f"{scale * mean:.{digits}f}"
    return text + (f" ± {scale * std:.{digits}f}" if std is not None else "")


def _results_table(results: dict) -> list[str]:
    lines = ["| training data | model | epochs | batch / lr | test loss | test accuracy (%) | time to train (s) "
             "| time to 90 % of final acc. (s) | seeds |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(results["summary"], key=lambda r: -r["fraction"]):
        lines.append(f"| {fraction_label(r['fraction'], r['n_train'])} | {r['label']} | {r['epochs']} | "
                     f"{r['batch_size']} / {r['lr']:g} | {_pm(r['test_loss_mean'], r['test_loss_std'], digits=3)} | "
                     f"**{_pm(r['test_acc_mean'], r['test_acc_std'], 100)}** | "
                     f"{_pm(r['train_seconds_mean'], r['train_seconds_std'], digits=1)} | "
                     f"{_pm(r['time_to_90pct_mean'], r['time_to_90pct_std'], digits=1)} | {r['n_seeds']} |")
    return lines


def _gap_table(results: dict) -> list[str]:
    n_train = {r["fraction"]: r["n_train"] for r in results["summary"]}
    lines = ["| training data | gap, pretrained − random (points) | 95 % CI (Welch's t) | df | verdict |",
             "|---|---:|---:|---:|---|"]
    for g in sorted(results["gaps"], key=lambda g: -g["fraction"]):
        ci = "-" if g["ci95_low_points"] is None else f"{g['ci95_low_points']:+.2f} … {g['ci95_high_points']:+.2f}"
        df = "-" if g["welch_df"] is None else f"{g['welch_df']:.1f}"
        lines.append(f"| {fraction_label(g['fraction'], n_train[g['fraction']])} | {g['gap_points']:+.2f} | {ci} | "
                     f"{df} | {g['verdict']} |")
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
                     f"{_pm(r.get('clean_acc_no_tta_mean'), r.get('clean_acc_no_tta_std'), 100)} | "
                     f"{_pm(r['ece_mean'], r['ece_std'], 100)} | {_pm(r['nll_mean'], r['nll_std'], digits=3)} | "
                     f"{_pm(r['mean_corruption_acc_mean'], r['mean_corruption_acc_std'], 100)} |")
    lines += ["", "| training data | metric | gap, pretrained − random | 95 % CI (Welch's t) | better is | verdict |",
              "|---|---|---:|---:|---|---|"]
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


def _corruption_means(records: list[dict]) -> dict | None:
    """Accuracy per corruption and severity for each arm at the largest fraction, mean over seeds (None without
    robustness records): where each arm's mean corruption accuracy comes from."""
    import numpy as np

    top = max(r["fraction"] for r in records)
    arms = {init: [r for r in records if r["init"] == init and r["fraction"] == top and r.get("corruption_acc")]
            for init in COMPARE_INITS}
    if not all(arms.values()):
        return None
    first = arms[COMPARE_INITS[0]][0]["corruption_acc"]
    severities = sorted({s for by in first.values() for s in by}, key=int)
    return {"fraction": top, "severities": severities,
            "accuracy": {init: {name: {s: float(np.mean([r["corruption_acc"][name][s] for r in runs]))
                                       for s in severities} for name in first} for init, runs in arms.items()}}


def _corruption_table(section: dict) -> list[str]:
    table = section.get("corruption_acc")
    if not table:
        return []
    labels = {r["init"]: r["label"] for r in section["summary"]}
    severities = table["severities"]
    header = " | ".join(f"{labels[i]} s{s}" for i in COMPARE_INITS for s in severities)
    lines = ["Accuracy (%) per corruption and severity (s = severity), largest fraction, mean over seeds, no TTA:",
             "", f"| corruption | {header} |", "|---|" + "---:|" * (len(COMPARE_INITS) * len(severities))]
    for name in table["accuracy"][COMPARE_INITS[0]]:
        cells = [f"{100 * table['accuracy'][i][name][s]:.1f}" for i in COMPARE_INITS for s in severities]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return lines


def _section_markdown(section: dict, files: list[str]) -> list[str]:
    figures = [f"![{alt}]({name})" for alt, name in zip(PLOT_ALTS, files)]
    return [f"## {section['label']}", "",
            "### Test accuracy (mean ± std over seeds)", "", *_results_table(section), "",
            "### Accuracy gap", "", *_gap_table(section), "", *_robustness_tables(section), *_lr_table(section),
            "### Figures", "", *[line for f in figures for line in (f, "")]]


def _wall_lines(results: dict) -> list[str]:
    wall = results.get("wall")
    if not wall:
        return []
    return [f"Wall time of the compare command that wrote this report: {wall['seconds'] / 60:.1f} min on "
            f"{results['machine']} ({wall['trained']} run(s) trained or resumed by it, {wall['reused']} reused "
            "finished; the robustness evaluation included).", ""]


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
        f"# ImageNet-pretrained vs random init: {base['arch']} on CIFAR-10 ({base['preset']} preset)", "",
        f"Made {results['created']} on {results['machine']}. Command: `{results['command']}`", "",
        f"**Pretrained arm:** {results['pretrained']['label']}. **Setting(s):** {settings}. **Recipe:** "
        f"{base['arch']}, {base['epochs']} epochs, SGD Nesterov, {lr} (batch {base['batch_size']}), "
        f"{base['warmup_epochs']:g}-epoch warm-up then {base['schedule']} decay, label smoothing "
        f"{base['label_smoothing']:g}, {100 * base['val_fraction']:g} % held out for validation, seeds "
        f"{', '.join(map(str, cfg['seeds']))}.", "",
        "## Conclusion", "", results["conclusion"], "",
        f"Original study (one run per model, 10 epochs, full data, 224 px with the ImageNet stem): "
        f"ImageNet-pretrained {ORIGINAL_STUDY['imagenet']} %, random init {ORIGINAL_STUDY['random']} %.", "",
        *[line for section, files in zip(results["sections"], names) for line in _section_markdown(section, files)],
        "## How to read this", "",
        "- *setting* is the image size and stem both arms train at. At 32 px the CIFAR stem keeps the resolution "
        "but handicaps ImageNet features by design; at 224 px with the ImageNet stem they see images as they were "
        "learned (the original study's setting). Every table and figure sits under its setting's heading.",
        "- *std* is the sample standard deviation over seeds; a seed sets the random init (and the new classifier), "
        "the validation split, shuffling and augmentation - the same for both arms of a seed.",
        "- *gap* is mean(pretrained) − mean(random) in accuracy points; its 95 % interval uses Welch's t (unequal "
        "variances). 'within noise' means the interval includes 0. With few seeds the t quantile is large (12.7 at "
        "df 1, 4.3 at df 2, 2.8 at df 4), so only large gaps can be told from noise.",
        "- *training data* is the first N training images of the pool (then the validation split); a small fraction "
        f"trains with a smaller batch (lr scaled with it) so an epoch keeps at least {MIN_STEPS_PER_EPOCH} steps.",
        "- *time to train* counts the training loop only (evaluation and compile warm-up excluded); *time to 90 %* "
        "is the training time until the test accuracy, measured after each epoch, first reached 90 % of that run's "
        "final accuracy; '-' when no epoch before the last got there.",
        f"- {_caveats(results)[-1]}", "",
        *_wall_lines(results),
        "## Runs", "", "| run directory | setting | peak lr | test acc (%) | test loss | train s |",
        "|---|---|---:|---:|---:|---:|", runs, "",
    ])


# ---------------------------------------------------------------------------------------------- plots


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
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
    busy = bool(_timing_caveat(results["runs"]))
    fig = Figure(figsize=(11, 3.4 * len(fractions)), layout="constrained")
    axes = fig.subplots(len(fractions), 2, squeeze=False)
    for row, fraction in zip(axes, fractions):
        for init in COMPARE_INITS:
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
    for init, nudge in zip(COMPARE_INITS, (0.97, 1.03)):  # a small sideways nudge keeps both error bars visible
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
    ax.legend()
    return _save(fig, path)


def plot_per_class(results: dict, path: Path) -> Path:
    import numpy as np
    from matplotlib.figure import Figure

    per = results["per_class"]
    names = per["random"]["class_names"]
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax = fig.subplots()
    x, width = np.arange(len(names)), 0.4
    for i, init in enumerate(COMPARE_INITS):
        p = per[init]
        mean = np.asarray(p["acc_mean_pct"])
        std = np.asarray(p["acc_std_pct"] if p["acc_std_pct"] is not None else np.zeros_like(mean))
        # The std bar is clipped to 0..100 %: an accuracy cannot leave that range, however few the seeds.
        yerr = np.stack([np.minimum(std, mean), np.minimum(std, 100 - mean)])
        ax.bar(x + (i - 0.5) * width, mean, width, yerr=yerr, capsize=3, color=STYLE[init]["color"],
               label=f"{results['labels'][init]} (n={p['n_seeds']})")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_yticks(range(0, 101, 20))
    ax.set(ylabel="test accuracy (%)", ylim=(0, 118),
           title=f"Per-class test accuracy, {100 * per['random']['fraction']:g} % of the training data "
                 "(mean ± 1 std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", ncol=2, frameon=False)  # in the headroom above 100 %, clear of the bars
    return _save(fig, path)


def plot_confusion(results: dict, path: Path) -> Path:
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 6.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, init in zip(axes, COMPARE_INITS):
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
    for init in COMPARE_INITS:
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
    ax.legend()
    return _save(fig, path)


def plot_reliability(results: dict, path: Path) -> Path:
    """Reliability diagrams side by side: accuracy per confidence bin, summed over seeds, the largest fraction."""
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.8), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    top = max(r["fraction"] for r in results["runs"])
    for ax, init in zip(axes, COMPARE_INITS):
        runs = [r for r in results["runs"] if r["init"] == init and r["fraction"] == top and r.get("reliability")]
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ax.set(xlabel="confidence (top-1 probability)", xlim=(0, 1), ylim=(0, 1), title=results["labels"][init])
        if not runs:
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


PLOTTERS = (plot_curves, plot_data_efficiency, plot_per_class, plot_confusion, plot_robustness, plot_reliability)


def plot_files(settings: list[str]) -> list[list[str]]:
    """Each setting's plot file names: PLOTS for a single setting, else PLOTS with '-<setting>' before '.png'."""
    if len(settings) == 1:
        return [list(PLOTS)]
    return [[name.replace(".png", f"-{setting}.png") for name in PLOTS] for setting in settings]


def write_report(out: Path, results: dict) -> list[Path]:
    """results.json, report.md and each setting's plots into `out` (each written atomically); returns the paths."""
    files = [write_json(out / "results.json", results), write_text(out / "report.md", render_markdown(results))]
    sections = results["sections"]
    for section, names in zip(sections, plot_files([s["setting"] for s in sections])):
        view = {**section, "labels": results["labels"],
                "runs": [r for r in results["runs"] if r["setting"] == section["setting"]]}
        files += [plotter(view, out / name) for plotter, name in zip(PLOTTERS, names)]
    return files


def print_summary(results: dict, files: list[Path]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"compare: test accuracy (%), mean ± std over seeds - {results['machine']}")
    for column in ("setting", "training data", "model", "peak lr", "test acc", "train s", "gap (95 % CI)"):
        table.add_column(column, justify="left" if column in ("setting", "training data", "model") else "right")
    gaps = {(g["setting"], g["fraction"]): g for g in results["gaps"]}
    for section in results["sections"]:
        for r in sorted(section["summary"], key=lambda r: (-r["fraction"], r["init"])):
            g = gaps[r["setting"], r["fraction"]]
            ci = "" if g["ci95_low_points"] is None else f" ({g['ci95_low_points']:+.1f}…{g['ci95_high_points']:+.1f})"
            gap = "" if r["init"] != "imagenet" else f"{g['gap_points']:+.2f}{ci}"
            table.add_row(r["setting"], fraction_label(r["fraction"], r["n_train"]), r["label"], f"{r['lr']:g}",
                          _pm(r["test_acc_mean"], r["test_acc_std"], 100),
                          _pm(r["train_seconds_mean"], r["train_seconds_std"], digits=1), gap)
        table.add_section()
    console = Console()
    if not console.is_terminal:  # a log or a pipe: print every column in full instead of cutting at 80
        console = Console(width=max(console.width, 240))
    console.print(table)
    console.print(results["conclusion"], highlight=False)
    for file in files:
        console.print(f"wrote {file}", highlight=False)
