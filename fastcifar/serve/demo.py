"""The Gradio demo: one image in, the ImageNet-pretrained and the from-scratch model's top-10 side by side.

Each model is named by what its metadata and its compare report record (`slot_title`): a "pretrained" model that
`fastcifar compare --if-no-weights stand-in` trained from stand-in random weights is titled and flagged as such
(`stand_in_warning`), as the report does, never presented as ImageNet-pretrained.

Owns: loading and warming the two models before anything is served (`load_models`), comparing them on one
image (`compare_image` -> per-model probabilities, latency and an agree/disagree verdict), the example gallery
(real CIFAR-10 test images upscaled for display, plus the user's own images), the page (`build_app`) and
serving it (`serve`). Decoding and validating an image is `fastcifar.data.images.load_image`'s job; this
module only turns its `FastCifarError` into a message in the page, so a bad upload never stops the server.

The original study needed two upload boxes because its Gradio version could not feed one input to two models;
here one event runs both predictors on the same pixels and returns both results at once, which also makes the
comparison one call for API clients (`/predict`: image -> pretrained, its latency, scratch, its latency,
verdict).

Safety: binds 127.0.0.1 unless `host` says otherwise, no share link unless asked, Gradio's analytics off,
uploads capped at `MAX_UPLOAD`, and uploaded files reach this code only after Gradio checked they are its own
uploads (we skip Gradio's PIL preprocessing, not its path checks).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
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
BACKEND_CHOICES = ("auto", "torch", "torch-compiled", "onnxruntime", "tensorrt")
TOP_K = 10
# A 10,000 px photo is ~20-40 MB as JPEG; past Pillow's decompression-bomb limit (~179 MP) load_image refuses it.
MAX_UPLOAD = "50mb"
EXAMPLES_PER_CLASS = 2
EXAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
MAX_USER_EXAMPLES = 60


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
    report directory's pretrained.json tells them apart (`kind`: torchvision | file | stand-in,
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
        if _same_file(record["init"], source) or (record.get("kind") == "torchvision" and init == "imagenet"):
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


def cifar_examples(data_dir: Path | None, model_paths: Sequence[Path], out_dir: Path,
                   per_class: int = EXAMPLES_PER_CLASS) -> list[tuple[str, str]]:
    """(png path, caption) for the first `per_class` test images of each class.

    The files keep the real 32 px test pixels (load_image passes them through bit for bit, so clicking one
    classifies exactly the test image); the page upscales them for display with CSS (`pixelated`), which a
    pre-upscaled file could not do without blurring what the model sees when it is resized back down.

    An explicit `data_dir` without CIFAR-10 is a user mistake; the implicit places (the models' recorded
    data dir, $FASTCIFAR_DATA, ~/.cache/fastcifar) are only looked in. Nothing is ever downloaded here. Models
    trained on CIFAR-100 or an image folder (model.json's `dataset`) show their own test images.
    """
    from fastcifar.data.cifar import load_class_names, load_split, locate_cifar
    from fastcifar.rundir import recorded_data_dirs, recorded_meta

    recorded = [d for p in model_paths for d in recorded_data_dirs(p)]
    meta = next((m for m in map(recorded_meta, model_paths) if m), {})
    if meta.get("dataset", "cifar10") != "cifar10":  # CIFAR-100 or an image folder: its own test images
        from fastcifar.data.datasets import model_split

        try:
            test, _ = model_split("test", data_dir, meta, recorded=recorded)
        except FastCifarError as exc:
            if data_dir is not None:
                raise
            log.warning("the models' %s test images are unusable for the gallery: %s", meta["dataset"], exc)
            return []
        return _gallery(test, tuple(meta.get("class_names") or ()), meta["dataset"], out_dir, per_class)
    try:
        root = locate_cifar(data_dir, recorded, required=data_dir is not None)
    except FastCifarError as exc:
        raise FastCifarError(f"--data-dir {data_dir} holds no CIFAR-10 batch files for the example gallery "
                             f"({exc})") from None
    if root is None:
        log.info("no CIFAR-10 found for the example gallery (looked in %s and the default data dir)",
                 ", ".join(map(str, recorded)) or "no recorded data dir")
        return []
    try:
        test, names = load_split(root, "test"), load_class_names(root)
    except FastCifarError as exc:
        if data_dir is not None:
            raise
        log.warning("CIFAR-10 in %s is unusable for the gallery: %s", root, exc)
        return []
    return _gallery(test, names, "cifar10", out_dir, per_class)


def _gallery(test, names, dataset: str, out_dir: Path, per_class: int) -> list[tuple[str, str]]:
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    examples = []
    for cls, name in enumerate(names):
        for index in np.flatnonzero(test.labels == cls)[:per_class]:
            safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
            path = out_dir / f"{dataset}-test-{index:05d}-{safe}.png"
            Image.fromarray(test.images[index]).save(path)
            examples.append((str(path), f"{name} #{index}"))
    return examples


def user_examples(folder: Path | None) -> list[tuple[str, str]]:
    """The user's own images from `folder`, by name; they are validated only when clicked, like uploads."""
    if folder is None:
        return []
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FastCifarError(f"--examples {folder} is not a directory")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXAMPLE_SUFFIXES)
    if len(files) > MAX_USER_EXAMPLES:
        log.warning("%s holds %d images; the gallery shows the first %d", folder, len(files), MAX_USER_EXAMPLES)
    return [(str(p), p.name) for p in files[:MAX_USER_EXAMPLES]]


# ---------------------------------------------------------------------------------------------- page

CSS = """
#verdict {padding: 0.2em 0.9em; border-radius: 8px; border-left: 6px solid #6366f1; min-height: 4.5em;}
#image-input img {image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain;}
#gallery img {image-rendering: pixelated; width: 100%; height: 100%; object-fit: cover;}
#gallery .grid-container {grid-template-columns: repeat(auto-fill, minmax(88px, 1fr)) !important;}
#gallery .grid-wrap {height: auto !important; min-height: 0 !important;}
"""
WAITING = "Upload, paste or capture an image (or pick one from the gallery), then click **Compare**."


def _gradio():
    # Analytics would phone home on launch and on every event; the demo must work on a closed network.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import gradio as gr

    return gr


def _upload_path(value: Any) -> tuple[str, str]:
    """(server path, name to show the user) of an image value received without Gradio's preprocessing."""
    if isinstance(value, dict):
        path, name = value.get("path"), value.get("orig_name")
    else:
        path, name = value, None
    if not path:
        raise FastCifarError("no image yet: upload, paste or capture one (or pick one from the gallery)")
    return str(path), name or Path(str(path)).name


def _page_results(gr, slots: Sequence[Slot], value: Any) -> tuple:
    """Outputs for the page/API: (probs, latency in ms) per model, then the verdict. Bad input -> gr.Error."""
    path = name = ""
    try:
        path, name = _upload_path(value)
        preds = compare_image(slots, path)
    except FastCifarError as exc:
        # The message names Gradio's cache path; the user knows the file by the name they uploaded.
        message = str(exc).replace(path, name) if path else str(exc)
        raise gr.Error(message, title="Cannot use this image", duration=None, print_exception=False) from None
    except Exception as exc:  # noqa: BLE001 - keep serving; the traceback goes to the server log
        log.exception("prediction failed")
        raise gr.Error(f"the models failed on this image ({type(exc).__name__}: {exc})") from None
    outputs: list = []
    for slot, pred in zip(slots, preds):
        outputs += [pred.probs, round(pred.latency_ms, 2)]
    # Plain values only (no component updates), so API clients get data, not Gradio's update dicts.
    return (*outputs, verdict_markdown(slots, preds))


def _where(slot: Slot) -> str:
    return f"{slot.predictor.backend} {slot.predictor.precision} on {getattr(slot.predictor, 'device', 'cpu')}"


_WEIGHTS_WORDS = {"stand-in": "STAND-IN random weights", "torchvision": "torchvision ImageNet weights"}


def _header(slots: Sequence[Slot]) -> str:
    lines = []
    for s in slots:
        spec = model_facts(s)
        init = _WEIGHTS_WORDS.get(spec["weights"], spec["init"]) if spec["weights"] else spec["init"]
        facts = [f"init {init}" if init else None,
                 f"test accuracy {spec['test_acc']:.1%}" if spec["test_acc"] is not None else None, _where(s)]
        # A stand-in's warning is its own line above the list; other contradictions are flagged beside the name.
        warning = f" ⚠️ {mislabel_note(s)}" if mislabel_note(s) and not stand_in_warning(s) else ""
        lines.append(f"- **{s.title}**: `{s.source.name or s.source}` ({', '.join(f for f in facts if f)}){warning}")
    banners = [f"> ⚠️ {w}" for w in map(stand_in_warning, slots) if w]
    title = " vs ".join(s.title for s in slots)
    return "\n\n".join([f"# {title}\nOne image, both models, top-{TOP_K} classes side by side.", *banners,
                        "\n".join(lines)])


def build_app(slots: Sequence[Slot], examples: Sequence[tuple[str, str]] = ()):
    """The page: one image input and a Compare button; both models' top-10 and latency; a gallery of examples."""
    gr = _gradio()
    with gr.Blocks(title="fastcifar demo", analytics_enabled=False) as app:
        gr.Markdown(_header(slots))
        with gr.Row():
            with gr.Column(scale=2):
                image = gr.Image(sources=["upload", "clipboard", "webcam"], type="filepath", label="Image",
                                 height=300, elem_id="image-input")
                button = gr.Button("Compare", variant="primary", elem_id="compare")
            with gr.Column(scale=3):
                verdict = gr.Markdown(WAITING, elem_id="verdict")
                outputs = []
                with gr.Row():
                    for slot in slots:
                        with gr.Column(min_width=220):
                            outputs.append(gr.Label(num_top_classes=TOP_K, label=slot.title,
                                                    elem_id=f"probs-{slot.key}"))
                            outputs.append(gr.Number(label=f"{slot.title}: inference latency (ms, 1 image, "
                                                            f"{_where(slot)})", precision=1,
                                                     interactive=False, elem_id=f"latency-{slot.key}"))
        outputs.append(verdict)
        gallery = gr.Gallery(value=list(examples) or None, label="Examples: click one to compare; drop in your own",
                             type="filepath", interactive=True, columns=10, height="auto", allow_preview=False,
                             file_types=["image"], elem_id="gallery")

        def compare(value):
            return _page_results(gr, slots, value)

        def pick(items, evt):
            path = (items or [(None, None)])[evt.index][0]
            return (path, *_page_results(gr, slots, path))

        # Gradio injects event data by the parameter's annotation; with postponed annotations (the
        # __future__ import) it would see the string "gr.SelectData" and fail to resolve the local `gr`.
        pick.__annotations__["evt"] = gr.SelectData

        def clear():
            return (*[None, None] * len(slots), WAITING)

        # preprocess=False: Gradio's own Image preprocessing opens the upload with PIL before our code runs, so
        # a corrupt file would end in Gradio's generic error; load_image gives the user a message instead.
        button.click(compare, image, outputs, api_name="predict", preprocess=False, concurrency_id="models")
        gallery.select(pick, gallery, [image, *outputs], api_visibility="private", concurrency_id="models")
        image.input(clear, None, outputs, api_visibility="private", queue=False)  # stale results mislead
    return app


def launch_app(app, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False, block: bool = True):
    """Serve `app`; with block=False return once the server is up (tests). Port in use -> FastCifarError."""
    gr = _gradio()
    try:
        # quiet: Gradio's own hints name its Python API ("set share=True in launch()"); ours name the flags.
        result = app.queue(default_concurrency_limit=1).launch(
            server_name=host, server_port=port, share=share, prevent_thread_lock=True, quiet=True,
            max_file_size=MAX_UPLOAD, show_error=False, ssr_mode=False, mcp_server=False, pwa=False,
            enable_monitoring=False, footer_links=["api", "settings"], css=CSS, theme=gr.themes.Default())
    except OSError as exc:
        raise FastCifarError(f"cannot serve the demo on {host}:{port} ({exc}). Is the port in use? Choose "
                             "another with --port.") from None
    print(f"Running on local URL: {app.local_url or f'http://{host}:{port}/'}"
          + ("" if share else "  (add --share for a temporary public *.gradio.live link)"), flush=True)
    if block:
        app.block_thread()
    return result


def serve(pretrained: Path | str, scratch: Path | str, *, backend: str = "auto", host: str = "127.0.0.1",
          port: int = 7860, share: bool = False, data_dir: Path | None = None,
          examples_dir: Path | None = None, precision: str | None = None) -> None:
    """`fastcifar demo`: check both models and the example folders, then serve until Ctrl-C."""
    slots = load_models(pretrained, scratch, backend, precision=precision)
    extra = user_examples(examples_dir)
    with tempfile.TemporaryDirectory(prefix="fastcifar-demo-") as tmp:
        examples = cifar_examples(data_dir, [s.source for s in slots], Path(tmp)) + extra
        app = build_app(slots, examples)
        if host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("serving on %s: anyone who can reach this machine on port %d can use the demo", host, port)
        launch_app(app, host=host, port=port, share=share, block=True)
