"""The compare report's numbers and words: per-run records read back from each run directory (summary.json,
metrics.jsonl, robustness.json), one section per setting (image size + stem) with mean ± std over seeds per (init,
fraction), the pretrained-minus-random gap with a Welch 95 % interval (stats.py), calibration and corruption gaps,
the learning rate each arm chose, and the conclusion paragraph and caveats generated from those numbers. Everything
report.md (markdown.py) says and the plots (plots.py) draw comes from the dict `collect` returns (results.json).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from fastcifar.config import setting_name
from fastcifar.models import RESNETS
from fastcifar.rundir import ARM_LABELS, ROBUSTNESS_FILE, read_metrics, read_summary
from fastcifar.study import axes
from fastcifar.study.stats import mean_std

# 2: per-setting sections, lr_selection, run warnings; 3: the linear-probe arm, paired intervals, `study` (axes.py)
FORMAT_VERSION = 3
INIT_ORDER = ("imagenet", "probe", "random")  # the arms in every table: fine-tuned, linear probe, scratch
ORIGINAL_STUDY = {"imagenet": 93.69, "random": 94.05}  # one 10-epoch run per model, test accuracy in %


def arm_labels(source: dict) -> dict:
    pretrained = "ImageNet-pretrained" if source.get("verified_imagenet") else ARM_LABELS[source["kind"]]
    features = "ImageNet" if source.get("verified_imagenet") else "stand-in"
    return {"imagenet": pretrained, "probe": f"linear probe ({features} features, frozen)", "random": "random init"}


def fraction_label(fraction: float, n_train: int) -> str:
    return f"{100 * fraction:g} % ({n_train:,} images)"


# ---------------------------------------------------------------------------------------------- numbers


def _run_record(run, out: Path) -> dict:
    summary, metrics = read_summary(run.run_dir) or {}, read_metrics(run.run_dir)
    keys = ("epochs", "n_train", "n_test", "test_acc", "test_loss", "val_acc", "train_seconds",
            "time_to_90pct_final_test_acc", "images_per_second", "device", "per_class_test_acc", "confusion",
            "class_names")
    return {"name": run.name, "init": run.init, "fraction": run.fraction, "seed": run.seed,
            "epochs_x": run.epochs_x, "noise": run.noise, "data_stream": summary.get("data_stream"),
            "noisy_labels": summary.get("noisy_labels"),
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
            # a run of the axes beyond the clean study is evaluated on clean images only (compare.py)
            "corruption_acc": {name: {sev: v["accuracy"] for sev, v in by.items()}
                               for name, by in r["corruptions"].items()} or None,
            "mean_corruption_acc": r["mean_corruption_acc"], "reliability": r["clean"]["reliability"]}


def is_core(record: dict) -> bool:
    """A run of the clean study at the preset's schedule (run_plan.PlannedRun.core): the main tables and figures."""
    return record.get("epochs_x", 1) == 1 and not record.get("noise")


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


def _metric_gap(fraction: float, records: list[dict], key: str, pretrained: str = "imagenet") -> dict | None:
    """pretrained - random on one robustness metric with the same intervals as accuracy (None: no data): the
    paired one over seed pairs beside Welch's (axes.gap); ci95_* is the one the verdict follows."""
    scale, better = ROBUSTNESS_METRICS[key]
    g = axes.gap([r for r in records if r["init"] == pretrained], [r for r in records if r["init"] == "random"],
                 key, better, scale)
    if g is None:
        return None
    main = g[g["interval"]]
    return {"setting": records[0]["setting"], "fraction": fraction, "metric": key, "better": better,
            "pretrained": pretrained, "gap": g["gap"], "ci95_low": main["low"] if main else None,
            "ci95_high": main["high"] if main else None, "interval": g["interval"], "welch": g["welch"],
            "paired": g["paired"], "verdict": g["verdict"]}


def _gap_row(fraction: float, records: list[dict], pretrained: str = "imagenet") -> dict:
    """pretrained - random test accuracy in points: Welch's interval (ci95_*, welch_df) and the paired one over the
    seed pairs (paired_*, when the runs' data streams verify the pairing); the verdict follows the paired one."""
    a = [r for r in records if r["init"] == pretrained]
    b = [r for r in records if r["init"] == "random"]
    g = axes.gap(a, b)
    welch, paired = g["welch"], g["paired"]
    return {"setting": records[0]["setting"], "fraction": fraction, "pretrained": pretrained,
            "gap_points": g["gap"], "ci95_low_points": welch["low"] if welch else None,
            "ci95_high_points": welch["high"] if welch else None, "welch_df": welch["df"] if welch else None,
            "se_points": welch["se"] if welch else None, "paired_ci95_low_points": paired["low"] if paired else None,
            "paired_ci95_high_points": paired["high"] if paired else None,
            "paired_df": paired["df"] if paired else None, "n_pairs": paired["n_pairs"] if paired else 0,
            "pairing": g["pairing"], "interval": g["interval"], "n_imagenet": len(a), "n_random": len(b),
            "verdict": g["verdict"], "verdict_welch": g["verdict_welch"]}



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


SOFTWARE_KEYS = ("git_sha", "git_dirty", "git_diff_sha256", "python", "torch", "torchvision", "cuda", "cudnn",
                 "driver", "omp_wait_policy")


def software(env: dict) -> dict:
    """What made the report, from the compare command's env.json: the code (git sha, dirty tree and its diff's
    hash), library versions, the driver."""
    return {k: env.get(k) for k in SOFTWARE_KEYS}


STEM_WORDS = {"cifar": "CIFAR stem (3x3/1, no max-pool)", "imagenet": "ImageNet stem (7x7/2 + max-pool)"}


def setting_label(setting: str, arch: str = "resnet18") -> str:
    """'32px-cifar' -> '32 px, CIFAR stem (3x3/1, no max-pool)'; a network with one stem (EfficientNet-Lite0's 3x3/2
    conv) is named instead of a ResNet's stem."""
    size, stem = setting.split("px-")
    return f"{size} px, {STEM_WORDS[stem] if arch in RESNETS else f'{arch} (its own stem)'}"


def collect(cfg, source: dict, runs: list, env: dict, lr_selection: dict | None = None,
            wall: dict | None = None, dataset: dict | None = None) -> dict:
    """Every number of the report, read from the finished run directories of `runs`; `wall`: the compare
    command's own wall seconds and how many runs it trained vs reused; `dataset`: compare.dataset_record."""
    results = summarize(cfg.to_dict(), source, [_run_record(run, Path(cfg.out)) for run in runs], env, lr_selection)
    results["wall"] = wall
    results["dataset"] = dataset
    return results


def _section(setting: str, records: list[dict], labels: dict, lr_selection: dict | None, arch: str) -> dict:
    """One setting's tables (the clean study at the preset's schedule): rows per (arm, fraction), gaps per fraction
    (the fine-tuned arm, or the linear probe without one, minus scratch), per-class figures, the lr choice."""
    def select(init, fraction):
        return [r for r in records if r["init"] == init and r["fraction"] == fraction]

    fractions = sorted({r["fraction"] for r in records})
    inits = [i for i in INIT_ORDER if any(r["init"] == i for r in records)]
    pretrained = inits[0]
    return {"setting": setting, "label": setting_label(setting, arch), "inits": inits, "pretrained": pretrained,
            "summary": [_summary_row(init, f, select(init, f), labels[init]) for f in fractions for init in inits],
            "gaps": [_gap_row(f, [r for r in records if r["fraction"] == f], pretrained) for f in fractions],
            "per_class": {init: _per_class(select(init, fractions[-1])) for init in inits},
            "robustness_gaps": [g for f in fractions for key in ROBUSTNESS_METRICS
                                if (g := _metric_gap(f, [r for r in records if r["fraction"] == f], key,
                                                     pretrained))],
            "corruption_acc": _corruption_means(records, inits), "lr_selection": lr_selection}


def summarize(config: dict, source: dict, records: list[dict], env: dict, lr_selection: dict | None = None) -> dict:
    """results.json's content from per-run records (one per (setting, init, fraction, seed)).

    `sections` holds one block per setting; `summary` and `gaps` list every section's rows (each names its
    setting) for scripts that want one table; `lr_selection` maps setting -> arm -> grid / val_acc / chosen.
    """
    labels = arm_labels(source)
    settings = list(dict.fromkeys(r["setting"] for r in records))
    arch = config.get("base", {}).get("arch", "resnet18")
    core = [r for r in records if is_core(r)]
    sections = [_section(s, [r for r in core if r["setting"] == s], labels, (lr_selection or {}).get(s), arch)
                for s in settings]
    n_test = records[0]["n_test"]
    top = max(r["fraction"] for r in records)
    p = _spread([r for r in records if r["init"] == "random" and r["fraction"] == top], "test_acc")[0]
    results = {
        "format_version": FORMAT_VERSION, "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(env), "software": software(env), "command": env.get("command_line"), "config": config,
        "pretrained": source, "labels": labels,
        "test_set": {"n_test": n_test, "binomial_se_points": 100 * math.sqrt(p * (1 - p) / n_test)},
        "sections": sections, "summary": [row for s in sections for row in s["summary"]],
        "gaps": [g for s in sections for g in s["gaps"]], "lr_selection": lr_selection,
        "original_study_test_acc_pct": ORIGINAL_STUDY, "runs": records,
        "study": axes.study_block(records, labels),
    }
    sentences = conclusion_sentences(results)
    results["conclusion"] = " ".join(text for text, _ in sentences)
    # The sentences built from wall times (time to 90 %, the busy-machine caveat): the machine's load decides them,
    # so a script comparing two studies' conclusions (tests/test_ray.py) leaves these out.
    results["conclusion_from_times"] = [text for text, from_times in sentences if from_times]
    return results


def _corruption_means(records: list[dict], inits: list[str]) -> dict | None:
    """Accuracy per corruption and severity for each arm at the largest fraction, mean over seeds (None without
    robustness records): where each arm's mean corruption accuracy comes from."""
    import numpy as np

    top = max(r["fraction"] for r in records)
    arms = {init: [r for r in records if r["init"] == init and r["fraction"] == top and r.get("corruption_acc")]
            for init in inits}
    if not all(arms.values()):
        return None
    first = arms[inits[0]][0]["corruption_acc"]
    severities = sorted({s for by in first.values() for s in by}, key=int)
    return {"fraction": top, "severities": severities,
            "accuracy": {init: {name: {s: float(np.mean([r["corruption_acc"][name][s] for r in runs]))
                                       for s in severities} for name in first} for init, runs in arms.items()}}


# ---------------------------------------------------------------------------------------------- words


def _ci_text(g: dict) -> str:
    """The interval the verdict follows: the paired one over seed pairs when there is one, else Welch's."""
    if g.get("interval") == "paired":
        return (f"paired 95 % CI {g['paired_ci95_low_points']:+.2f} to {g['paired_ci95_high_points']:+.2f}; Welch "
                f"{g['ci95_low_points']:+.2f} to {g['ci95_high_points']:+.2f}")
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
        widths = [_width(g) for g in gaps if g["ci95_low_points"] is not None]
        return ("The numbers support no difference between the inits at any fraction tried: every 95 % interval "
                f"includes 0. That is not proof they are equal - the intervals are up to {max(widths):.1f} points "
                "wide; more seeds narrow them.")
    parts = [f"a real advantage for {who} at {', '.join(pct[v])} of the data" for v, who in
             (("pretrained ahead", "ImageNet pretraining"), ("random ahead", "random init")) if pct[v]]
    return "The numbers support " + " and ".join(parts) + "; any other gap is within noise."


def _width(g: dict) -> float:
    if g.get("interval") == "paired":
        return g["paired_ci95_high_points"] - g["paired_ci95_low_points"]
    return g["ci95_high_points"] - g["ci95_low_points"]


def caveats(results: dict) -> list[str]:
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
        notes.append(f"Both arms are far from converged (best mean test accuracy {100 * best:.1f} %): a gap here is "
                     "what pretraining buys at this short budget, not at convergence (the original study's 10-epoch "
                     "runs reached ~94 % with either init).")
    notes += _warnings_caveat(results["runs"]) + timing_caveat(results["runs"])
    ts = results["test_set"]
    notes.append(f"The test set has {ts['n_test']:,} images: one model's accuracy carries a binomial standard error "
                 f"of about ±{ts['binomial_se_points']:.2f} points.")
    return notes


def _warnings_caveat(runs: list[dict]) -> list[str]:
    warned = [r["name"] for r in runs if r.get("warnings")]
    if not warned:
        return []
    return [f"{len(warned)} run(s) warned that they probably diverged (training loss above guessing and not "
            f"falling) or were at chance on held-out images after the warm-up ({', '.join(warned[:4])}"
            f"{' ...' if len(warned) > 4 else ''}; see each run's summary.json): their accuracy understates what the "
            "arm can do."]


def timing_caveat(runs: list[dict]) -> list[str]:
    """Flag a busy machine: runs of the same size whose training times differ by more than 2x."""
    spreads = []

    def size(r: dict) -> tuple:  # equal work: same data and epochs, and a linear probe only beside another
        return r["setting"], r["fraction"], r.get("epochs"), r["init"] == "probe"

    for key in {size(r) for r in runs}:
        seconds = [r["train_seconds"] for r in runs if size(r) == key and r["train_seconds"]]
        spreads.append(max(seconds) / min(seconds) if seconds else 1.0)
    if max(spreads, default=1.0) <= 2.0:
        return []
    return [f"Training times of equally sized runs differ up to {max(spreads):.1f}x, so the machine was busy with "
            "other work: the time columns measure that, not the inits."]


def _seeds_text(n: int) -> str:
    return "one seed" if n == 1 else f"mean of {n} seeds"


def _findings(section: dict, name_setting: bool, runs: list[dict]) -> list[tuple[str, bool]]:
    """What one setting's numbers support, per fraction (largest first), then overall and time to 90 %; each
    sentence with whether it is built from wall times."""
    rows = {(r["init"], r["fraction"]): r for r in section["summary"]}
    sentences = []
    for g in sorted(section["gaps"], key=lambda g: -g["fraction"]):
        pre, rnd = rows[section["pretrained"], g["fraction"]], rows["random", g["fraction"]]
        sentences.append(f"With {fraction_label(g['fraction'], pre['n_train'])} for training, "
                         f"{pre['label']} reaches {100 * pre['test_acc_mean']:.2f} % and random init "
                         f"{100 * rnd['test_acc_mean']:.2f} % ({_seeds_text(pre['n_seeds'])}): "
                         f"{GAP_SENTENCES[g['verdict']](g)}.")
    sentences.append(_overall_sentence(section))
    if name_setting:
        sentences[0] = f"At {section['label']}: {sentences[0][0].lower()}{sentences[0][1:]}"
    found = [(text, False) for text in sentences]
    top = max(section["gaps"], key=lambda g: g["fraction"])["fraction"]
    pre, rnd = rows[section["pretrained"], top], rows["random", top]
    busy = bool(timing_caveat(runs))  # times measured on a busy machine are not a speed result
    if pre["time_to_90pct_mean"] is not None and rnd["time_to_90pct_mean"] is not None and not busy:
        found.append((f"With the most training data, pretrained reaches 90 % of its final accuracy after "
                      f"{pre['time_to_90pct_mean']:.1f} s of training, random init after "
                      f"{rnd['time_to_90pct_mean']:.1f} s.", True))
    return found


def conclusion_sentences(results: dict) -> list[tuple[str, bool]]:
    """The conclusion paragraph's sentences - what the numbers support, per setting and fraction, then its caveats
    - each with whether it is built from wall times (results.json's `conclusion_from_times`)."""
    named = len(results["sections"]) > 1
    timed = set(timing_caveat(results["runs"]))
    return ([s for section in results["sections"] for s in
             _findings(section, named, [r for r in results["runs"] if r["setting"] == section["setting"]])]
            + axes.sentences(results["study"], fraction_label)
            + [(note, note in timed) for note in caveats(results)])
