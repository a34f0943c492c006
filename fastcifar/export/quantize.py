"""Explicit INT8 (`quantize_int8`): an fp32 fastcifar ONNX file -> a Q/DQ ONNX file calibrated on training images.

TensorRT 11 has no implicit INT8 calibration, so INT8 must be in the graph as QuantizeLinear/DequantizeLinear
pairs; ONNX Runtime's static quantizer writes them on the CPU (no GPU needed). What TensorRT accepts is written:
symmetric int8 activations and weights, per-channel weight scales, float biases, Q/DQ only around the convolutions
(preprocessing and classifier stay float). The same file runs in ONNX Runtime, which checks its parity.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastcifar.errors import FastCifarError
from fastcifar.preprocess import META_PREFIX, decode_metadata
from fastcifar.fileio import atomic_path

# Convolutions only: the classifier (a negligible share of the FLOPs) stays fp32, which kept top-1 agreement up.
QUANTIZED_OPS = ["Conv"]
# Activation ranges: MinMax per 32-image batch with a moving average, so a few outlier images do not set the scale:
# the best agreement of the calibrations tried (bench/README.md, "Export").
CALIBRATION_BATCH = 32
CALIBRATION_METHOD = "MinMax"
CALIBRATION_OPTIONS = {"CalibMovingAverage": True, "CalibMovingAverageConstant": 0.1}


@dataclass(frozen=True)
class Int8Calibration:
    """What `build_engine(int8_calibration=...)` needs to make the Q/DQ file first."""

    model_path: Path | str  # the run: its PyTorch model is the parity reference, its data dir the default
    n_images: int = 512
    data_dir: Path | str | None = None


def calibration_images(train, n_images: int, seed: int = 0) -> np.ndarray:
    """`n_images` distinct training images picked with a fixed seed (uint8 NHWC)."""
    if n_images < 1:
        raise FastCifarError(f"--int8-calib-images must be >= 1, got {n_images}")
    n = min(n_images, len(train))
    return train.images[np.sort(np.random.default_rng(seed).choice(len(train), n, replace=False))]


def _reader(images: np.ndarray, spec, input_kind: str, input_name: str):
    """An ONNX Runtime CalibrationDataReader feeding `images` in the graph's input form."""
    from onnxruntime.quantization import CalibrationDataReader

    from fastcifar.preprocess import normalize_images

    feed = {"raw": lambda x: x, "normalized": lambda x: normalize_images(x, spec).numpy()}[input_kind]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(range(0, len(images), CALIBRATION_BATCH))

        def get_next(self):
            start = next(self.batches, None)
            return None if start is None else {input_name: feed(images[start:start + CALIBRATION_BATCH])}

    return Reader()


@contextlib.contextmanager
def _quiet():
    """Silence the quantizer's root-logger advice and prints: `--json` output must stay one JSON object."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def quantize_int8(onnx_path: Path | str, model_path: Path | str, *, n_images: int = 512,
                  data_dir: Path | str | None = None, out_path: Path | str | None = None, verify: bool = True,
                  max_images: int | None = None, seed: int = 0):
    """Write `<run>-int8[-normalized].onnx` beside `onnx_path` (an fp32 fastcifar export) -> ExportResult.

    Calibrates on `n_images` training images of `data_dir` (default: the run's data dir); with `verify`
    compares against the fp32 PyTorch model (`model_path`) on the test images like any export; the INT8
    policy judges top-1 agreement and accuracy drop instead of a logit tolerance (onnx.MIN_AGREEMENT).
    """
    import onnx

    from fastcifar.extras import require_onnxruntime

    require_onnxruntime("INT8 calibration (--int8-calib-images)")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from fastcifar.export import onnx as ox
    from fastcifar.export import parity
    from fastcifar.models import load_model

    onnx_path = Path(onnx_path)
    start = time.perf_counter()
    meta = ox.read_onnx_metadata(onnx_path)
    if meta["precision"] != "fp32":
        raise FastCifarError(f"INT8 calibration starts from an fp32 export; {onnx_path.name} is {meta['precision']} "
                             "(export with --precision fp32)")
    _, spec, model_meta = load_model(model_path)
    train, root = parity.load_split_for("train", data_dir, model_meta,
                                        "INT8 calibration needs the training images: pass --data-dir DIR.")
    images = calibration_images(train, n_images, seed)
    out_path = Path(out_path) if out_path else onnx_path.with_name(
        ox.onnx_file_name(meta["source_run"] or onnx_path.stem, "int8", meta["input_kind"]))
    ox.refuse_foreign_file(out_path, meta.get("source_weights_sha256"))  # never another model's INT8 file
    method = getattr(CalibrationMethod, CALIBRATION_METHOD)
    with atomic_path(out_path) as tmp, _quiet():
        quantize_static(str(onnx_path), str(tmp), _reader(images, spec, meta["input_kind"], meta["input_name"]),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=QUANTIZED_OPS, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=method,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                       "QuantizeBias": False, **CALIBRATION_OPTIONS})
        proto = onnx.load(str(tmp))
        calibration = {"n_images": int(len(images)), "split": "train", "seed": seed, "method": CALIBRATION_METHOD,
                       **CALIBRATION_OPTIONS, "batch": CALIBRATION_BATCH, "quantized_ops": QUANTIZED_OPS,
                       "data_dir": str(root), "source_onnx": onnx_path.name}
        props = {k: v for k, v in ((p.key, p.value) for p in proto.metadata_props) if k.startswith(META_PREFIX)}
        props.update({META_PREFIX + "precision": "int8",
                      META_PREFIX + "int8_calibration": json.dumps(calibration)})
        ox.set_metadata(proto, props)
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
        ox.check_onnx_file(tmp)
    result = ox.ExportResult(path=out_path, parity=None, precision="int8", input_kind=meta["input_kind"],
                             opset=max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                             metadata=decode_metadata(props), size_bytes=out_path.stat().st_size)
    if verify:
        result.parity = parity.verify_onnx(out_path, model_path, data_dir, max_images=max_images,
                                           test=parity.load_split_for("test", root, model_meta))
        result.parity_path = parity.write_parity(out_path, result.parity)
    result.seconds = round(time.perf_counter() - start, 2)
    if result.parity is not None:
        parity.raise_on_mismatch(result)
    return result
