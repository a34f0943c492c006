"""The demo's two models: loading and warming them (`load_models`), what each one is (`slot_title`: a "pretrained"
model that compare trained from stand-in weights is titled and flagged as such, never as ImageNet-pretrained) and
comparing them on one image (`compare_image` -> probabilities, latency, an agree/disagree verdict)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from fastcifar.errors import FastCifarError

log = logging.getLogger(__name__)

TITLES = {"pretrained": "ImageNet-pretrained", "scratch": "from scratch"}
FILE_TITLE = "pretrained (weights file)"  # init from a weights file that no compare record vouches for
TOP_K = 10
BACKEND_CHOICES = ("auto", "torch", "torch-compiled", "onnxruntime", "tensorrt")


@dataclass(frozen=True)
class Slot:
    """One side of the comparison: which model, loaded as which predictor."""

    key: str  # "pretrained" | "scratch"
    source: Path
    predictor: Any  # fastcifar.serve.predictor.Predictor

    @cached_property
    def weights(self) -> dict | None:
        """The pretrained-weights record of the compare report this model was trained in (`weights_record`)."""
        return weights_record(self)

    @property
    def title(self) -> str:
        return slot_title(self)


@dataclass(frozen=True)
class Prediction:
    probs: dict[str, float]  # class name -> probability, all classes
    top: str
    latency_ms: float


# ---------------------------------------------------------------------------------------------- models


def load_models(pretrained: Path | str, scratch: Path | str, backend: str = "auto",
                device: str | None = None, precision: str | None = None) -> tuple[Slot, Slot]:
    """Load both predictors and run each once, so a missing or broken model fails before a port is opened.

    The warm-up run also keeps first-call costs (allocations, compile, TensorRT context) out of the
    latency the page shows for the first image.
    """
    if backend not in BACKEND_CHOICES:
        raise FastCifarError(f"unknown backend '{backend}' (choose from {', '.join(BACKEND_CHOICES)})")
    slots = tuple(_load_slot(key, Path(path).expanduser(), None if backend == "auto" else backend, device, precision)
                  for key, path in (("pretrained", pretrained), ("scratch", scratch)))
    return slots[0], slots[1]


def _load_slot(key: str, path: Path, backend: str | None, device: str | None, precision: str | None = None) -> Slot:
    from fastcifar.serve.predictor import load_predictor

    if not path.exists():
        raise FastCifarError(f"--{key} {path} does not exist (expected a run directory, model.safetensors, "
                             ".onnx or TensorRT engine)")
    try:
        predictor = load_predictor(path, backend=backend, device=device, precision=precision)
    except FastCifarError as exc:
        raise FastCifarError(f"--{key} {path}: {exc}") from None
    size = int(predictor.input_size)
    try:
        probs = predictor.predict(np.zeros((1, size, size, 3), np.uint8))
    except Exception as exc:  # noqa: BLE001 - a model that loads but cannot run is a broken model file
        raise FastCifarError(f"--{key} {path} loads but cannot run ({type(exc).__name__}: {exc})") from None
    if np.shape(probs) != (1, len(predictor.class_names)):
        raise FastCifarError(f"--{key} {path} returned {np.shape(probs)} scores for one image, expected "
                             f"(1, {len(predictor.class_names)})")
    slot = Slot(key=key, source=path, predictor=predictor)
    if mislabel_note(slot):
        log.warning("--%s %s: %s; the page says so", key, path, mislabel_note(slot))
    return slot


def _spec(slot: Slot) -> dict:
    spec = getattr(slot.predictor, "spec", None)
    return spec if isinstance(spec, dict) else {}


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _same_file(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except (OSError, RuntimeError):
        return False


def weights_record(slot: Slot) -> dict | None:
    """What `fastcifar compare` recorded about the pretrained weights this model started from, or None.

    model.json says only `init` ("imagenet", or "file" with `weights_source` = the file's path): a compare run
    whose ImageNet weights were missing (`--if-no-weights stand-in`) is init "file" like a real weights file. The
    report directory's pretrained.json tells them apart (`kind`: torchvision | package | file | stand-in,
    `verified_imagenet`, `label`); it is looked for beside the weights file and above the run directory
    (<report>/runs/<run>, <report>/lr-select/<run>), and used only when its `init` is the weights this model
    recorded. An .onnx file or engine records no weights file, so it gets None (the title then says "weights
    file", never "ImageNet-pretrained").
    """
    from fastcifar.rundir import PRETRAINED_FILE

    spec = _spec(slot)
    init, source = spec.get("init"), spec.get("weights_source")
    if init in (None, "random") or not isinstance(source, str) or not source:
        return None
    places = [] if "://" in source else [Path(source).expanduser().parent]
    run_dir = (slot.source if slot.source.is_dir() else slot.source.parent).resolve()
    places += [run_dir, *list(run_dir.parents)[:2]]
    for place in dict.fromkeys(places):
        record = _read_json(place / PRETRAINED_FILE)
        if not record or not isinstance(record.get("init"), str):
            continue
        installed = record.get("kind") in ("torchvision", "package")  # weights that no path names
        if _same_file(record["init"], source) or (installed and init == "imagenet"):
            return record
    return None


def is_stand_in(slot: Slot) -> bool:
    """True for a model compare trained from stand-in random weights (its report recorded kind "stand-in")."""
    return (slot.weights or {}).get("kind") == "stand-in"


def slot_title(slot: Slot) -> str:
    """The model's name on the page, the report's name for its weights: "ImageNet-pretrained" only for ImageNet
    weights (torchvision's, or a file compare verified by sha256), "pretrained (STAND-IN random weights)" for a
    stand-in run, "pretrained (unverified weights file)" / "pretrained (weights file)" for other files."""
    if slot.key != "pretrained":
        return TITLES[slot.key]
    if slot.weights is not None:
        from fastcifar.rundir import ARM_LABELS

        record = slot.weights
        return TITLES["pretrained"] if record.get("verified_imagenet") else ARM_LABELS.get(record.get("kind"),
                                                                                          FILE_TITLE)
    return FILE_TITLE if _spec(slot).get("init") == "file" else TITLES["pretrained"]


def stand_in_warning(slot: Slot) -> str | None:
    """The page's warning line for a stand-in model (None otherwise)."""
    if not is_stand_in(slot):
        return None
    return (f"**The {'“pretrained”' if slot.key == 'pretrained' else slot.key} model is a STAND-IN with random "
            "weights, not ImageNet-pretrained:** `fastcifar compare --if-no-weights stand-in` started it from random "
            "weights because no ImageNet weights were available, so this page compares two random-init models and "
            "says nothing about ImageNet pretraining.")


def model_facts(slot: Slot) -> dict:
    """init, the weights it started from and recorded test accuracy from the model's own metadata (None where a
    format does not carry them); `weights` is compare's record kind (torchvision | file | stand-in) or None."""
    spec = _spec(slot)
    acc = (spec.get("metrics") or {}).get("test_acc") if isinstance(spec.get("metrics"), dict) else None
    if acc is None:
        acc = spec.get("test_acc")  # an .onnx file's metadata
    record = slot.weights or {}
    return {"init": spec.get("init"), "test_acc": float(acc) if isinstance(acc, (int, float)) else None,
            "weights": record.get("kind"), "verified_imagenet": record.get("verified_imagenet")}


def mislabel_note(slot: Slot) -> str | None:
    """A note when the metadata contradicts the side a model was put on (e.g. two from-scratch runs, or a
    "pretrained" one that compare trained from stand-in random weights)."""
    init = model_facts(slot)["init"]
    if slot.key == "pretrained" and init == "random":
        return "its metadata says it was trained from random init"
    if slot.key == "pretrained" and is_stand_in(slot):
        return ("its compare report says it started from STAND-IN random weights (--if-no-weights stand-in), not "
                "ImageNet weights")
    if slot.key == "pretrained" and slot.weights is not None and not slot.weights.get("verified_imagenet"):
        return f"it started from {slot.weights.get('label') or 'a weights file'}, not verified as ImageNet weights"
    if slot.key == "scratch" and init not in (None, "random"):
        return f"its metadata says init={init}, not random" + (" (STAND-IN weights)" if is_stand_in(slot) else "")
    return None


def compare_image(slots: Sequence[Slot], image: Any) -> list[Prediction]:
    """Run every slot on `image` (path, bytes or PIL image); `load_image` raises FastCifarError for bad input."""
    from fastcifar.data.images import load_image

    pixels_by_size: dict[int, np.ndarray] = {}  # decode once per input size, not once per model
    results = []
    for slot in slots:
        size = int(slot.predictor.input_size)
        if size not in pixels_by_size:
            pixels_by_size[size] = load_image(image, size)
        batch = pixels_by_size[size][None]
        start = time.perf_counter()
        probs = np.asarray(slot.predictor.predict(batch))[0]
        latency_ms = (time.perf_counter() - start) * 1e3
        names = slot.predictor.class_names
        results.append(Prediction(probs={n: float(p) for n, p in zip(names, probs)},
                                  top=names[int(np.argmax(probs))], latency_ms=latency_ms))
    return results


def verdict_markdown(slots: Sequence[Slot], preds: Sequence[Prediction]) -> str:
    """One line saying whether the two top-1 classes agree; a disagreement is flagged with a warning sign."""
    if len({p.top for p in preds}) == 1:
        top = preds[0].top
        detail = " · ".join(f"{s.title} {p.probs[top]:.0%}" for s, p in zip(slots, preds))
        return f"### ✅ Both models say _{top}_\n{detail}"
    detail = " · ".join(f"{s.title}: **{p.top}** ({p.probs[p.top]:.0%})" for s, p in zip(slots, preds))
    return f"### ⚠️ The models disagree\n{detail}"


# ---------------------------------------------------------------------------------------------- gallery
