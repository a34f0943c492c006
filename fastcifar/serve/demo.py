"""The Gradio demo: one image in, the ImageNet-pretrained and the from-scratch model's top-10 side by side
(demo_slots.py: the models; demo_gallery.py: the examples). Owns the page (`build_app`) and serving it (`serve`,
also `/predict` for API clients: image -> both models' results and the verdict in one call). Binds 127.0.0.1 unless
told otherwise, no share link unless asked, analytics off, uploads capped at MAX_UPLOAD; a bad upload is a message
in the page, never the end of the server (docs/serving.md, "Demo").
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any


from fastcifar.errors import FastCifarError
from fastcifar.serve.demo_gallery import cifar_examples, user_examples
from fastcifar.serve.demo_slots import (TOP_K, Slot, compare_image, load_models, mislabel_note, model_facts,
                                       stand_in_warning, verdict_markdown)

log = logging.getLogger(__name__)

# A 10,000 px photo is ~20-40 MB as JPEG; past Pillow's decompression-bomb limit (~179 MP) load_image refuses it.
MAX_UPLOAD = "50mb"


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
