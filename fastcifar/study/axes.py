"""The study beyond one gap: every arm (fine-tuned, linear probe, scratch and its longer schedules) at every
label-noise level, their gaps with paired and Welch intervals, and what pretraining is worth in labelled images.

Owns, from the per-run records results.py reads back: `series_of` (a run's arm and schedule: `imagenet`, `probe`,
`random`, `random-x3`), `pairing` (whether two arms' runs of a seed saw the same images, labels, order and
augmentation: the digests train/build.data_stream writes to summary.json), `gap` (mean gap, the paired interval over
seed pairs beside Welch's, and the verdict), `study_block` (results.json's `study`: `rows`, `gaps`, `worth`, and the
sentences) and the sentences the conclusion adds. Its JSON schema is documented in docs/compare.md, "results.json".
"""

from __future__ import annotations

from fastcifar.study.stats import mean_std, paired_ci, verdict, welch_ci, worth_multiple_interval

PRETRAINED = ("imagenet", "probe")  # the arms that start from the ImageNet weights
METRICS = {"test_acc": 100, "ece": 100, "nll": 1, "train_seconds": 1}  # a row's metrics and their scale
BOOTSTRAP_RESAMPLES = 2000


def series_of(record: dict) -> str:
    """The arm and schedule: 'imagenet', 'probe', 'random', or 'random-x3' for 3x the preset's epochs."""
    k = record.get("epochs_x", 1)
    return record["init"] if k == 1 else f"{record['init']}-x{k}"


def series_label(series: str, labels: dict) -> str:
    init, _, k = series.partition("-x")
    return labels[init] + (f", {k}x epochs" if k else "")


def _cells(records: list[dict]) -> dict:
    """{(setting, noise, series, fraction): [records, by seed]}."""
    cells: dict = {}
    for r in sorted(records, key=lambda r: r["seed"]):
        cells.setdefault((r["setting"], r.get("noise", 0.0), series_of(r), r["fraction"]), []).append(r)
    return cells


def pairing(a: list[dict], b: list[dict]) -> tuple[list[tuple[dict, dict]], str | None]:
    """(the seed pairs of runs `a` and `b`, None when every pair trained on the same subset and labels and - where
    both augment - the same order and augmentation in every epoch they share; else why not)."""
    by_seed = {r["seed"]: r for r in b}
    pairs = [(r, by_seed[r["seed"]]) for r in a if r["seed"] in by_seed]
    for x, y in pairs:
        sx, sy = x.get("data_stream"), y.get("data_stream")
        if not sx or not sy:
            return pairs, f"seed {x['seed']}: a run did not record its data stream (trained by an earlier version)"
        if sx["subset"] != sy["subset"]:
            return pairs, f"seed {x['seed']}: the two runs trained on different images or labels"
        if sx["augmented"] and sy["augmented"]:
            shared = min(len(sx["epochs"]), len(sy["epochs"]))
            if sx["epochs"][:shared] != sy["epochs"][:shared]:
                return pairs, f"seed {x['seed']}: the two runs saw another order or augmentation"
    return pairs, None


def gap(a: list[dict], b: list[dict], key: str = "test_acc", better: str = "higher",
        scale: float | None = None, names: tuple[str, str] = ("pretrained", "random")) -> dict | None:
    """mean(a) - mean(b) of `key` (times `scale`, default METRICS'), Welch's interval, and the paired interval over
    the seed pairs when `pairing` verified them; the verdict (`names`: the sides' words) follows the paired interval
    when there is one."""
    scale = METRICS[key] if scale is None else scale
    va = [scale * r[key] for r in a if r.get(key) is not None]
    vb = [scale * r[key] for r in b if r.get(key) is not None]
    if not va or not vb:
        return None
    pairs, unpaired = pairing(a, b)
    pairs = [(x, y) for x, y in pairs if x.get(key) is not None and y.get(key) is not None]
    welch = welch_ci(va, vb)
    paired = paired_ci([scale * x[key] for x, _ in pairs], [scale * y[key] for _, y in pairs]) \
        if unpaired is None and len(pairs) >= 2 else None
    return {"gap": mean_std(va)[0] - mean_std(vb)[0], "better": better,
            "welch": None if welch is None else {"low": welch.low, "high": welch.high, "df": welch.df, "se": welch.se},
            "paired": None if paired is None else {"low": paired.low, "high": paired.high, "df": paired.df,
                                                   "se": paired.se, "n_pairs": len(pairs)},
            "pairing": "verified" if unpaired is None else unpaired,
            "interval": "paired" if paired is not None else "welch",
            "verdict": verdict(paired if paired is not None else welch, better, names),
            "verdict_welch": verdict(welch, better, names)}


def _row(key: tuple, runs: list[dict], labels: dict) -> dict:
    setting, noise, series, fraction = key
    row = {"setting": setting, "noise": noise, "series": series, "label": series_label(series, labels),
           "fraction": fraction, "n_train": runs[0]["n_train"], "epochs": runs[0]["epochs"], "n_seeds": len(runs),
           "seeds": [r["seed"] for r in runs]}
    for metric in METRICS:
        row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std([r[metric] for r in runs if r.get(metric) is not None])
    return row


def _comparisons(series: set[str]) -> list[tuple[str, str]]:
    """(a, b) pairs the study reports a - b for: each pretrained arm against scratch at every schedule, and
    fine-tuning against the linear probe."""
    scratch = sorted((s for s in series if s.startswith("random")), key=lambda s: int(s.partition("-x")[2] or 1))
    pairs = [(p, s) for p in PRETRAINED if p in series for s in scratch]
    if {"imagenet", "probe"} <= series:
        pairs.append(("imagenet", "probe"))
    return pairs


def worth(cells: dict, setting: str, noise: float, pretrained: str) -> list[dict]:
    """Per fraction: the training-set size at which scratch (the preset's schedule) reaches `pretrained`'s mean
    accuracy, as a multiple of that fraction's size: interpolated in log(images) between measured fractions only,
    "more than" where scratch never gets there, with a bootstrap interval over the seeds (stats.py)."""
    fractions = sorted(f for (s, n, series, f) in cells if (s, n, series) == (setting, noise, "random"))
    if len(fractions) < 2:
        return []
    scratch = [cells[setting, noise, "random", f] for f in fractions]
    sizes = [runs[0]["n_train"] for runs in scratch]
    out = []
    for fraction in fractions:
        target = cells.get((setting, noise, pretrained, fraction))
        if not target:
            continue
        n_target = target[0]["n_train"]
        w = worth_multiple_interval(n_target, [r["test_acc"] for r in target],
                                    [[r["test_acc"] for r in runs] for runs in scratch], sizes,
                                    n_resamples=BOOTSTRAP_RESAMPLES, seed=0)
        out.append({"setting": setting, "noise": noise, "pretrained": pretrained, "fraction": fraction,
                    "n_train": n_target, "target_acc": mean_std([r["test_acc"] for r in target])[0],
                    "scratch_sizes": sizes, **w})
    return out


def verdict_text(g: dict, labels: dict) -> str:
    """A study gap's verdict with the series named: 'ImageNet-pretrained ahead', 'within noise', ..."""
    return {"a ahead": f"{labels[g['a']]} ahead", "b ahead": f"{labels[g['b']]} ahead"}.get(g["verdict"], g["verdict"])


def study_block(records: list[dict], labels: dict) -> dict:
    """results.json's `study` (schema: docs/compare.md, "results.json"): rows per (setting, noise, series,
    fraction); gaps per comparison with both intervals; the labelled-image multiple per pretrained arm, noise level
    and fraction; which axes the study had."""
    cells = _cells(records)
    series = {k[2] for k in cells}
    rows = [_row(key, runs, labels) for key, runs in sorted(cells.items(), key=lambda kv: (
        kv[0][0], kv[0][1], kv[0][2], -kv[0][3]))]
    gaps = []
    for (setting, noise, fraction) in sorted({(k[0], k[1], k[3]) for k in cells}, key=lambda t: (t[0], t[1], -t[2])):
        for a, b in _comparisons({k[2] for k in cells if (k[0], k[1], k[3]) == (setting, noise, fraction)}):
            for key, better in (("test_acc", "higher"), ("ece", "lower")):
                g = gap(cells[setting, noise, a, fraction], cells[setting, noise, b, fraction], key, better,
                        names=("a", "b"))  # any two series: the verdict names the side, verdict_text the series
                if g is not None:
                    gaps.append({"setting": setting, "noise": noise, "fraction": fraction, "a": a, "b": b,
                                 "metric": key, **g})
    worth_rows = [w for setting in sorted({k[0] for k in cells}) for noise in sorted({k[1] for k in cells})
                  for p in PRETRAINED for w in worth(cells, setting, noise, p)]
    return {"series": sorted(series), "labels": {s: series_label(s, labels) for s in sorted(series)},
            "noise_levels": sorted({k[1] for k in cells}), "rows": rows, "gaps": gaps, "worth": worth_rows}


# ---------------------------------------------------------------------------------------------- words


def multiple_text(w: dict) -> str:
    """'about 12x (95 % bootstrap interval 5.1x to more than 100x)', 'more than 100x', 'at most 1x'."""
    def one(k: float, relation: str) -> str:
        return {"=": f"{k:.3g}x", ">": f"more than {k:.3g}x", "<=": f"at most {k:.3g}x"}[relation]

    head = one(w["multiple"], w["relation"])
    if w["relation"] == "=":
        head = "about " + head
    if w.get("low") is None:
        return head + " (one seed per point: no interval)"
    if (w["low"], w["low_relation"]) == (w["high"], w["high_relation"]) == (w["multiple"], w["relation"]):
        return head + " (in every bootstrap resample of the seeds)"
    return (f"{head} ({100 * w['level']:g} % bootstrap interval over seeds {one(w['low'], w['low_relation'])} to "
            f"{one(w['high'], w['high_relation'])})")


def _images_text(w: dict) -> str:
    words = {"=": "~", ">": "more than ", "<=": "at most "}
    return f"{words[w['relation']]}{w['images']:,.0f} images"


def interval_text(g: dict, scale_word: str = "points") -> str:
    parts = []
    if g["paired"]:
        parts.append(f"paired 95 % CI {g['paired']['low']:+.2f} to {g['paired']['high']:+.2f}")
    if g["welch"]:
        parts.append(f"Welch {g['welch']['low']:+.2f} to {g['welch']['high']:+.2f}")
    return f"{g['gap']:+.2f} {scale_word}" + (f" ({'; '.join(parts)})" if parts else " (one seed: no interval)")


def sentences(block: dict, fraction_label) -> list[tuple[str, bool]]:
    """The conclusion's sentences on the axes beyond one gap (each only when the study had that axis), each with
    whether it is built from wall times (results.json's `conclusion_from_times`)."""
    rows = {(r["setting"], r["noise"], r["series"], r["fraction"]): r for r in block["rows"]}
    gaps = {(g["setting"], g["noise"], g["fraction"], g["a"], g["b"], g["metric"]): g for g in block["gaps"]}
    out = []
    for setting in sorted({r["setting"] for r in block["rows"]}):
        fractions = sorted({r["fraction"] for r in block["rows"] if r["setting"] == setting})
        top, low = fractions[-1], fractions[0]

        def acc(series, fraction, noise=0.0):
            r = rows.get((setting, noise, series, fraction))
            return None if r is None else f"{100 * r['test_acc_mean']:.1f} %"

        if (setting, 0.0, "probe", top) in rows:
            n = rows[setting, 0.0, "probe", top]["n_train"]
            text = (f"With {fraction_label(top, n)}, the linear probe on frozen ImageNet features reaches "
                    f"{acc('probe', top)}, fine-tuning {acc('imagenet', top) or '-'} and scratch {acc('random', top)}")
            g = gaps.get((setting, 0.0, top, "imagenet", "probe", "test_acc"))
            if g:
                text += f"; fine-tuning minus probe: {interval_text(g)}, {verdict_text(g, block['labels'])}"
            out.append((text + ".", False))
            if low != top and (setting, 0.0, "probe", low) in rows:
                out.append((f"With {fraction_label(low, rows[setting, 0.0, 'probe', low]['n_train'])}: probe "
                            f"{acc('probe', low)}, fine-tuning {acc('imagenet', low) or '-'}, scratch "
                            f"{acc('random', low)}.", False))
        for p in PRETRAINED:
            ws = sorted((w for w in block["worth"] if (w["setting"], w["noise"], w["pretrained"]) == (setting, 0.0, p)),
                        key=lambda w: w["fraction"])
            if not ws:
                continue
            w = ws[0]
            who = "Fine-tuned ImageNet weights are" if p == "imagenet" else "The linear probe is"
            rest = "; ".join(f"at {100 * o['fraction']:g} %: {multiple_text(o)}" for o in ws[1:])
            out.append((f"{who} worth {multiple_text(w)} the labelled images at "
                        f"{fraction_label(w['fraction'], w['n_train'])}: scratch needs {_images_text(w)} to reach its "
                        f"{100 * w['target_acc']:.1f} % (interpolated in log(images) between measured fractions, "
                        f"never extrapolated)" + (f"; {rest}." if rest else "."), False))
        for series in sorted({r["series"] for r in block["rows"] if r["series"].startswith("random-x")}):
            g = gaps.get((setting, 0.0, top, "imagenet", series, "test_acc"))
            r, base = rows.get((setting, 0.0, series, top)), rows.get((setting, 0.0, "random", top))
            if g is None or r is None or base is None:
                continue
            closed = {"a ahead": "does not close the gap", "within noise": "closes the gap to within noise",
                      "b ahead": "overtakes fine-tuning", "no CI": "cannot be judged with one seed"}[g["verdict"]]
            out.append((f"Scratch with {series.partition('-x')[2]}x the epochs reaches {acc(series, top)} at "
                        f"{fraction_label(top, r['n_train'])} and {closed}: fine-tuning minus it "
                        f"{interval_text(g)}.", False))
            out.append((f"Its training took {r['train_seconds_mean']:.0f} s against scratch's "
                        f"{base['train_seconds_mean']:.0f} s at the preset's epochs.", True))
        for noise in [n for n in block["noise_levels"] if n]:
            g = gaps.get((setting, noise, top, "imagenet", "random", "test_acc")) or \
                gaps.get((setting, noise, top, "probe", "random", "test_acc"))
            clean = gaps.get((setting, 0.0, top, g["a"], "random", "test_acc")) if g else None
            if g is None:
                continue
            ece = gaps.get((setting, noise, top, g["a"], "random", "ece"))
            n = rows[setting, noise, "random", top]["n_train"]
            text = (f"Under {100 * noise:g} % label noise at {fraction_label(top, n)}: "
                    f"{block['labels'][g['a']]} {acc(g['a'], top, noise)}, scratch "
                    f"{acc('random', top, noise)}, gap {interval_text(g)}, {verdict_text(g, block['labels'])}")
            if clean:
                text += f" (clean: {clean['gap']:+.2f} points)"
            if ece:
                text += (f"; ECE gap {ece['gap']:+.2f} points ({verdict_text(ece, block['labels'])}, lower is "
                         "better)")
            out.append((text + ".", False))
    return out
