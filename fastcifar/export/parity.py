"""The parity check: an exported ONNX file in ONNX Runtime against the fp32 PyTorch model on real test images.

Owns `verify_onnx` (the parity record and its `<name>.parity.json`), the tolerance per precision (`parity_stats`),
`parity_metrics` (the numbers this check and `fastcifar bench` both report), the ONNX Runtime session it runs in
and the bf16 emulation for runtimes without bf16 kernels. The reference is fed by `preprocess.normalize_images`,
written apart from the graph's own preprocessing, so a `raw` graph's in-graph normalisation is checked too.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch

from fastcifar.errors import DataError, FastCifarError
from fastcifar.export.onnx import ExportResult, parity_path_for, read_onnx_metadata, sha256_file
from fastcifar.preprocess import normalize_images

# Allowed max |logit diff| against the fp32 PyTorch model, relative to the largest |logit| (at least 1): above the
# error measured per precision, still catching a wrong mean/std or layout, which moves logits by their own size
# (bench/README.md, "Export"). fp16: ResNet-18 measured 7e-4, EfficientNet-Lite0 (49 convolutions of fp16
# activations) 1.0e-2 (docs/efficientnet-lite0.md, "Export").
REL_TOLERANCE = {"fp32": 1e-4, "fp16": 3e-2, "bf16": 6e-2, "int8": None}
# INT8 logits legitimately move by a lot: what must hold is the decision on real images (bench/README.md, "Export").
MIN_AGREEMENT = {"int8": 0.9}
MAX_ACCURACY_DROP = {"int8": 0.02}
VERIFY_BATCH = 256


def write_parity(onnx_path: Path, parity: dict) -> Path:
    from fastcifar.fileio import write_json

    return write_json(parity_path_for(onnx_path), parity)


def raise_on_mismatch(result: ExportResult) -> None:
    p = result.parity
    if p["passed"]:
        return
    raise FastCifarError(f"parity check failed for {result.path}: {'; '.join(p['failures'])} (top-1 agreement "
                         f"{p['top1_agreement']:.4f}, accuracy torch {p['torch_accuracy']:.4f} vs onnx "
                         f"{p['onnx_accuracy']:.4f} on {p['n_images']} images). The ONNX file is kept for "
                         f"inspection, with these figures in {result.parity_path.name} beside it. To export without "
                         "the check, pass --no-verify.")


PARITY_NEEDS_DATA = "The parity check needs the test images: pass --data-dir DIR, or --no-verify to skip it."


def parity_metrics(logits: np.ndarray, labels: np.ndarray, reference: np.ndarray | None) -> dict:
    """Accuracy of `logits`, and (given the reference logits) agreement, |logit diff| and the accuracy drop."""
    pred = logits.argmax(1)
    out = {"accuracy": float((pred == labels).mean()), "reference_accuracy": None, "accuracy_drop": None,
           "agreement": None, "max_abs_diff": None, "mean_abs_diff": None}
    if reference is not None:
        diff = np.abs(logits.astype(np.float64) - reference.astype(np.float64))
        ref_acc = float((reference.argmax(1) == labels).mean())
        out.update(reference_accuracy=ref_acc, accuracy_drop=round((ref_acc - out["accuracy"]) * 100.0, 6),
                   agreement=float((pred == reference.argmax(1)).mean()),
                   max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()))
    return out


def load_split_for(split: str, data_dir: Path | str | None, model_meta: dict,
                   why: str = PARITY_NEEDS_DATA) -> tuple:
    """(split, its root) of the dataset the run was trained on (fastcifar/data/datasets.model_split), from
    `data_dir`, else the run's recorded data dir, else the default one. Never downloads: an export should not fetch
    160 MB behind the user's back. For CIFAR-10 only the split's own batches are read."""
    from fastcifar.data.datasets import model_split

    try:
        return model_split(split, data_dir, model_meta, class_names=model_meta.get("class_names"))
    except DataError as exc:
        raise FastCifarError(f"{exc} {why}") from None


def load_test_split(data_dir: Path | str | None, model_meta: dict):
    """(test split, its root)."""
    return load_split_for("test", data_dir, model_meta)


def make_ort_session(path_or_bytes, providers: list | None = None):
    """An ONNX Runtime session: CUDA EP when torch sees a GPU, else CPU; threads that do not spin.

    Spinning intra-op threads keep the CPU busy between runs and slowed torch in the same process 10x.
    TF32 is off on the CUDA EP: the check measures the file's fp32 arithmetic, not TF32's 10-bit mantissas.
    """
    from fastcifar.extras import require_onnxruntime

    ort = require_onnxruntime("the ONNX parity check", "export with --no-verify")
    if providers is None:
        cuda = [("CUDAExecutionProvider", {"use_tf32": "0"})] if torch.cuda.is_available() else []
        providers = cuda + ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # ORT's warnings about unused initializers etc. are noise here
    source = str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes
    return ort.InferenceSession(source, sess_options=options, providers=providers)


def upcast_bf16(proto):
    """A copy of `proto` with every bf16 tensor/type turned into fp32 (weights keep their bf16 rounding).

    ONNX Runtime has no bf16 Conv on CPU; this runs the same file's structure and bf16-rounded weights in
    fp32 arithmetic, so bf16 exports are still checked there (marked `emulated` in the parity record).
    """
    import onnx
    from onnx import TensorProto, numpy_helper

    proto = copy.deepcopy(proto)
    bf16, fp32 = TensorProto.BFLOAT16, TensorProto.FLOAT

    def fix_tensor(t):
        if t.data_type == bf16:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))

    for t in proto.graph.initializer:
        fix_tensor(t)
    for vi in list(proto.graph.input) + list(proto.graph.output) + list(proto.graph.value_info):
        if vi.type.tensor_type.elem_type == bf16:
            vi.type.tensor_type.elem_type = fp32
    for node in proto.graph.node:
        for attr in node.attribute:
            if attr.name == "to" and attr.i == bf16:
                attr.i = fp32
            if attr.type == onnx.AttributeProto.TENSOR:
                fix_tensor(attr.t)
    return proto


# Why a check of a reduced-precision graph did not run its real arithmetic, per precision (bf16 also on
# GPUs whose ONNX Runtime lacks bf16 kernels: the graph is then upcast to fp32, see upcast_bf16).
CPU_EMULATION = {
    "fp16": "fp16 weights in fp32 arithmetic: ONNX Runtime's CPU provider runs fp16 nodes through inserted casts",
    "bf16": "bf16 weights in fp32 arithmetic: ONNX Runtime has no bf16 kernels for the graph's ops here",
}


def _session_for(onnx_path: Path, precision: str, providers):
    """(session, emulation note or None): the file as is - or, without bf16 kernels, its fp32 upcast."""
    import onnx

    try:
        session = make_ort_session(onnx_path, providers)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own NOT_IMPLEMENTED for missing kernels
        if precision != "bf16":
            raise FastCifarError(f"ONNX Runtime cannot load {onnx_path}: {str(exc).splitlines()[0]}") from None
        upcast = upcast_bf16(onnx.load(str(onnx_path))).SerializeToString()
        return make_ort_session(upcast, providers), CPU_EMULATION["bf16"]
    on_cpu = session.get_providers()[0] == "CPUExecutionProvider"
    return session, CPU_EMULATION.get(precision) if on_cpu else None


def reference_logits(model, spec, images: np.ndarray, batch: int = VERIFY_BATCH) -> np.ndarray:
    """The fp32 PyTorch model's logits for uint8 NHWC `images` (CPU, eager)."""
    model = model.float().eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            out.append(model(normalize_images(images[i:i + batch], spec)).numpy())
    return np.concatenate(out)


def onnx_logits(session, spec, input_kind: str, images: np.ndarray, batch: int = VERIFY_BATCH) -> np.ndarray:
    name = session.get_inputs()[0].name
    feed = {"raw": lambda x: x, "normalized": lambda x: normalize_images(x, spec).numpy()}[input_kind]
    return np.concatenate([session.run(None, {name: feed(images[i:i + batch])})[0]
                           for i in range(0, len(images), batch)]).astype(np.float32)


def parity_stats(ref: np.ndarray, out: np.ndarray, labels: np.ndarray, precision: str) -> dict:
    """Compare ONNX logits `out` with reference logits `ref` and apply the precision's tolerance policy."""
    m = parity_metrics(out, labels, ref)
    max_diff, agreement = m["max_abs_diff"], m["agreement"]
    torch_acc, onnx_acc = m["reference_accuracy"], m["accuracy"]
    scale = max(1.0, float(np.abs(ref).max()))
    rel = REL_TOLERANCE[precision]
    tolerance = None if rel is None else rel * scale
    min_agreement, max_drop = MIN_AGREEMENT.get(precision), MAX_ACCURACY_DROP.get(precision)
    drop = torch_acc - onnx_acc  # a fraction here; parity_metrics' accuracy_drop is in points
    failures = [reason for reason, failed in (
        (f"max |logit diff| {max_diff:.3g} > tolerance {tolerance or 0:.3g}",
         tolerance is not None and max_diff > tolerance),
        (f"top-1 agreement {agreement:.4f} < {min_agreement}", min_agreement is not None and agreement < min_agreement),
        (f"accuracy drop {drop:.4f} > {max_drop}", max_drop is not None and drop > max_drop),
    ) if failed]
    return {
        "passed": not failures, "failures": failures, "precision": precision, "n_images": int(len(labels)),
        "max_abs_diff": max_diff, "mean_abs_diff": m["mean_abs_diff"],
        "tolerance": tolerance, "logit_scale": scale, "min_agreement": min_agreement,
        "max_accuracy_drop": max_drop,
        "top1_agreement": agreement, "disagreements": int((ref.argmax(1) != out.argmax(1)).sum()),
        "torch_accuracy": torch_acc, "onnx_accuracy": onnx_acc,
    }


def verify_onnx(onnx_path: Path | str, model_path: Path | str, data_dir: Path | str | None = None, *,
                max_images: int | None = None, providers: list[str] | None = None, test=None) -> dict:
    """ONNX Runtime vs the fp32 PyTorch model on real test images -> the parity record (see parity_stats).

    `test` may carry load_test_split's (split, directory); otherwise it is read from `data_dir` / the run's data dir.
    """
    from fastcifar.models import load_model

    onnx_path = Path(onnx_path)
    start = time.perf_counter()
    meta = read_onnx_metadata(onnx_path)
    model, spec, model_meta = load_model(model_path)
    test, root = test if test is not None else load_test_split(data_dir, model_meta)
    n = len(test) if max_images is None else min(int(max_images), len(test))
    if n < 1:
        raise FastCifarError("the parity check needs at least one test image")
    images, labels = test.images[:n], test.labels[:n]
    ref = reference_logits(model, spec, images)
    session, emulated = _session_for(onnx_path, meta["precision"], providers)
    out = onnx_logits(session, spec, meta["input_kind"], images)
    stats = parity_stats(ref, out, labels, meta["precision"])
    stats.update(input_kind=meta["input_kind"], reference="PyTorch fp32 eager (cpu)",
                 runtime="onnxruntime " + ",".join(session.get_providers()), emulated=emulated,
                 onnx_file=onnx_path.name, onnx_sha256=sha256_file(onnx_path),
                 data_dir=str(root),
                 seconds=round(time.perf_counter() - start, 2))
    return stats
