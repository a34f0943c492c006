"""`fastcifar evaluate`: any model `load_predictor` loads, on its dataset's test split - calibration and corruption
robustness beside clean accuracy (Hendrycks, Lee and Mazeika, ICML 2019: what pretraining buys beyond top-1).

Owns `evaluate_model(...)` (load the predictor and the test split, run `fastcifar.robustness.evaluate_logits`,
draw the reliability diagram) and the terminal table. The numbers and corruptions are the robustness wing's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from fastcifar.errors import FastCifarError
from fastcifar.fileio import atomic_path, make_dir

RELIABILITY_PNG = "reliability.png"


def evaluate_model(model: Path | str, *, backend: str | None = None, device=None, precision: str | None = None,
                   data_dir: Path | str | None = None, corruptions: tuple[str, ...] = (),
                   severities: tuple[int, ...] = (1, 2, 3, 4, 5), cifar10c: Path | str | None = None,
                   max_images: int | None = None, plots: Path | str | None = None, seed: int = 0,
                   log: Callable[[str], None] = lambda message: None) -> dict:
    """Clean accuracy, NLL, Brier, ECE (+ reliability diagram in `plots`) and accuracy per corruption/severity.

    A model that cannot be loaded is one message with exit code 2; so are bad corruption options (parsed by the
    caller with fastcifar.robustness.parse_corruptions / parse_severities).
    """
    from fastcifar.data.datasets import model_split
    from fastcifar.rundir import recorded_data_dirs, recorded_meta
    from fastcifar.robustness import evaluate_logits
    from fastcifar.serve.artifacts import source_run_dir
    from fastcifar.serve.predictor import load_predictor

    if max_images is not None and max_images < 1:
        raise FastCifarError(f"--max-images must be >= 1, got {max_images}", exit_code=2)
    try:
        predictor = load_predictor(model, backend, device, precision=precision)
    except FastCifarError as exc:
        raise FastCifarError(str(exc), exit_code=2) from None
    source = source_run_dir(model) or model  # an .onnx / engine: the run it was exported from, when it is here
    meta = recorded_meta(source)
    if cifar10c is not None and meta.get("dataset", "cifar10") != "cifar10":
        raise FastCifarError(f"--cifar10c holds corrupted CIFAR-10 test images, and this model was trained on "
                             f"{meta['dataset']}: leave it out (the corruptions are then generated from the model's "
                             "own test images)", exit_code=2)
    test, root = model_split("test", data_dir, meta, recorded=recorded_data_dirs(source),
                             class_names=predictor.class_names,
                             no_download="evaluate reads the test split but never downloads it (fastcifar data "
                                         "--data-dir DIR does)")
    n = len(test) if max_images is None else min(max_images, len(test))
    if plots is not None:
        plots = make_dir(plots, "--plots")
    log(f"{n} test images from {root}; {predictor.backend} {predictor.precision} on {predictor.device}")
    result = evaluate_logits(predictor.logits, test.images[:n], test.labels[:n], corruptions=corruptions,
                             severities=severities, seed=seed, device=predictor.device, cifar10c=cifar10c, log=log)
    result.update(model=str(model), backend=predictor.backend, precision=predictor.precision,
                  device=predictor.device, data_dir=str(root), n_test=n, files=[])
    if plots is not None:
        result["files"].append(str(plot_reliability(result["clean"]["reliability"], plots / RELIABILITY_PNG,
                                                    title=f"{Path(model).name}: ECE "
                                                          f"{100 * result['clean']['ece']:.2f} %")))
    return result


def plot_reliability(rel: dict, path: Path, title: str) -> Path:
    """The reliability diagram: accuracy per confidence bin against the diagonal, bin counts below."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5.6), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    edges = rel["edges"]
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    width = edges[1] - edges[0]
    acc = [a if a is not None else 0 for a in rel["accuracy"]]
    top.bar(centres, acc, width=width * 0.95, color="#1f77b4", label="accuracy in bin")
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centres, rel["count"], width=width * 0.95, color="#999999")
    bottom.set(xlabel="confidence (top-1 probability)", ylabel="images")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def print_evaluation(result: dict) -> None:
    from rich.table import Table

    from fastcifar.runtime import table_console

    clean = result["clean"]
    console = table_console()
    console.print(f"{result['model']}: {result['backend']} {result['precision']} on {result['device']}, "
                  f"{result['n_test']:,} test images - accuracy {100 * clean['accuracy']:.2f} %, NLL "
                  f"{clean['nll']:.3f}, Brier {clean['brier']:.3f}, ECE {100 * clean['ece']:.2f} % "
                  f"(15 bins)", highlight=False)
    if result["corruptions"]:
        table = Table(title=f"accuracy (%) under corruption - {result['source']}")
        table.add_column("corruption")
        for severity in result["severities"]:
            table.add_column(f"severity {severity}", justify="right")
        for name, by_severity in result["corruptions"].items():
            table.add_row(name, *(f"{100 * by_severity[str(s)]['accuracy']:.2f}" for s in result["severities"]))
        console.print(table)
        console.print(f"mean corruption accuracy {100 * result['mean_corruption_acc']:.2f} % = "
                      f"{result['relative_corruption_acc']:.3f} x clean", highlight=False)
    for file in result["files"]:
        console.print(f"wrote {file}", highlight=False)
