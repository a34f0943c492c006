"""ONNX export of a saved fastcifar model and its `fastcifar.*` metadata.

Owns the exported graph (`ExportModule`: optional in-graph preprocessing, the reduced-precision cast, the model,
float32 logits out), `write_onnx` (the dynamo exporter on the uncompiled eval model, explicit opset, dynamic batch,
one self-contained file, then onnx.checker) and the metadata written into and read back from the file
(`read_onnx_metadata`). The graph's inputs and outputs per `--input` kind: docs/inference.md, "Export".
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from fastcifar.errors import FastCifarError
from fastcifar.precision import EXPORT_PRECISIONS, torch_dtype
from fastcifar import fileio
from fastcifar.fileio import atomic_file, file_digest
from fastcifar.preprocess import META_PREFIX, NATIVE_SIZE, decode_metadata, scale_shift

# torch dtype behind each graph precision. int8 graphs come from quantize.py (Q/DQ on an fp32 graph).
INPUT_KINDS = ("raw", "normalized")
INPUT_NAMES = {"raw": "pixels", "normalized": "images"}
OUTPUT_NAME = "logits"
# Opset 20 is read by TensorRT 10.x/11.x and ONNX Runtime >= 1.17; bf16 Conv/Gemm only exist from opset 22.
DEFAULT_OPSET = {"fp32": 20, "fp16": 20, "bf16": 22}
MIN_OPSET = {"fp32": 18, "fp16": 18, "bf16": 22}  # 18: the oldest opset the dynamo exporter emits
META_FORMAT_VERSION = 1
# Metadata values that are JSON (lists, numbers, null); the rest are plain strings.


@dataclass
class ExportResult:
    path: Path
    parity: dict | None
    precision: str
    input_kind: str
    opset: int
    metadata: dict = field(default_factory=dict)  # decoded fastcifar metadata (read_onnx_metadata's form)
    parity_path: Path | None = None
    size_bytes: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(path=str(self.path), parity_path=str(self.parity_path) if self.parity_path else None)
        return d


# ---------------------------------------------------------------------------------------------- the graph


def fuse_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Fold every eval-mode BatchNorm into the conv before it (in place), the way torchvision ResNets pair them.

    Done in fp32 before any cast: the folded weights are rounded once, and the dynamo exporter's own
    folding produces fp32 weights beside bf16 activations (a graph onnx.checker rejects).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for child in module.children():
        fuse_batchnorm(child)
    children = dict(module.named_children())
    for name, conv in children.items():
        # resnet pairs: conv1/bn1, conv2/bn2, conv3/bn3; downsample Sequential: 0 (conv) / 1 (bn)
        bn_name = (name.replace("conv", "bn") if name.startswith("conv") else
                   str(int(name) + 1) if name.isdigit() else "")
        bn = children.get(bn_name)
        if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
            setattr(module, name, fuse_conv_bn_eval(conv, bn))
            setattr(module, bn_name, torch.nn.Identity())
    return module


class ExportModule(torch.nn.Module):
    """What the ONNX graph computes: [pixels -> normalise (fp32) ->] cast -> [resize ->] model -> fp32 logits."""

    def __init__(self, model: torch.nn.Module, spec, input_kind: str, dtype: torch.dtype):
        super().__init__()
        self.model = fuse_batchnorm(copy.deepcopy(model).float().eval()).to(dtype)
        self.raw = input_kind == "raw"
        self.dtype = dtype
        self.resize_to = spec.image_size if self.raw and spec.image_size != NATIVE_SIZE else None
        # (x / 255 - mean) / std as one multiply-add per pixel, in the graph's own ops (fastcifar/preprocess.py)
        scale, shift = scale_shift(spec.mean, spec.std)
        self.register_buffer("scale", torch.tensor(scale).view(1, 3, 1, 1))
        self.register_buffer("shift", torch.tensor(shift).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.raw:
            x = x.permute(0, 3, 1, 2).float() * self.scale + self.shift
        x = x.to(self.dtype)
        if self.resize_to is not None:  # after the cast: at 224 px the resize moves 49x the pixels
            x = torch.nn.functional.interpolate(x, size=(self.resize_to, self.resize_to), mode="bilinear",
                                                align_corners=False)
        return self.model(x).float()


def example_input(spec, input_kind: str, batch: int = 2) -> torch.Tensor:
    """A dummy input of the graph's input type. Batch 2: torch.export specialises sizes 0 and 1."""
    if input_kind == "raw":
        return torch.randint(0, 256, (batch, NATIVE_SIZE, NATIVE_SIZE, 3), dtype=torch.uint8)
    return torch.randn(batch, 3, spec.image_size, spec.image_size)


# ---------------------------------------------------------------------------------------------- metadata


def onnx_metadata(spec, model_meta: dict, *, input_kind: str, precision: str, weights_sha256: str) -> dict:
    """The `fastcifar.*` metadata_props: strings as they are, everything else JSON-encoded."""
    values = {
        "format_version": META_FORMAT_VERSION,
        "class_names": list(spec.class_names), "num_classes": spec.num_classes,
        "mean": list(spec.mean), "std": list(spec.std),  # 0-1 scale, RGB
        "image_size": spec.image_size,  # the size the network was trained at
        "input_size": NATIVE_SIZE if input_kind == "raw" else spec.image_size,  # H/W of the input tensor
        "input_kind": input_kind, "input_name": INPUT_NAMES[input_kind], "output_name": OUTPUT_NAME,
        "resize": "bilinear", "precision": precision,
        "arch": spec.arch, "stem": spec.stem, "init": spec.init,
        "source_run": str(model_meta.get("run_name") or ""),
        "source_weights_sha256": weights_sha256,
        "test_acc": (model_meta.get("metrics") or {}).get("test_acc"),
    }
    return {META_PREFIX + k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


def set_metadata(proto, props: dict) -> None:
    """Replace the fastcifar.* metadata_props of `proto` with `props` (other producers' entries stay)."""
    keep = [(p.key, p.value) for p in proto.metadata_props if not p.key.startswith(META_PREFIX)]
    del proto.metadata_props[:]
    for key, value in keep + sorted(props.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def read_onnx_metadata(path: Path | str) -> dict:
    """The decoded fastcifar metadata of an ONNX file, keys without the `fastcifar.` prefix.

    Reads only the model header (weights are not loaded). Raises FastCifarError when the file is missing,
    not ONNX, or was not written by fastcifar.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FastCifarError(f"{path} does not exist")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        meta = decode_metadata({p.key: p.value for p in proto.metadata_props})
    except Exception as exc:  # noqa: BLE001 - protobuf/JSON errors: the file is not what it claims
        raise FastCifarError(f"{path} is not a readable ONNX file ({type(exc).__name__}: {exc})") from None
    if "input_kind" not in meta:
        raise FastCifarError(f"{path} has no fastcifar metadata: it was not written by `fastcifar export`")
    return meta


def sha256_file(path: Path) -> str:
    return file_digest(path)


# ---------------------------------------------------------------------------------------------- export


def onnx_file_name(run_name: str, precision: str, input_kind: str) -> str:
    """`<run>[-<precision>][-normalized].onnx`; fp32 raw (the default) gets no suffix."""
    return run_name + ("" if precision == "fp32" else f"-{precision}") + \
        ("" if input_kind == "raw" else f"-{input_kind}") + ".onnx"


def run_name_of(model_path: Path | str) -> str:
    """The name an export of this model is filed under: models.model_name's (the one `serve` and `bench` use too;
    '-best' for a run's best-validation weights)."""
    from fastcifar.models import model_name, resolve_model_files

    return model_name(resolve_model_files(model_path)[0])


def default_onnx_path(model_path: Path | str, out_dir: Path | str, precision: str, input_kind: str) -> Path:
    return Path(out_dir) / onnx_file_name(run_name_of(model_path), precision, input_kind)


def check_options(precision: str, input_kind: str, opset: int | None) -> int:
    """The opset to write (the precision's default when None), or one message for a bad precision/input/opset."""
    if precision not in EXPORT_PRECISIONS:
        raise FastCifarError(f"unknown precision '{precision}' (choose from {', '.join(EXPORT_PRECISIONS)})")
    if input_kind not in INPUT_KINDS:
        raise FastCifarError(f"unknown input kind '{input_kind}' (choose from {', '.join(INPUT_KINDS)})")
    opset = DEFAULT_OPSET[precision] if opset is None else int(opset)
    if opset < MIN_OPSET[precision]:
        raise FastCifarError(f"opset {opset} is too old for {precision}: use --opset {MIN_OPSET[precision]} "
                             "or newer" + (" (bf16 Conv arrived in opset 22)" if precision == "bf16" else ""))
    newest = max_opset()
    if opset > newest:
        raise FastCifarError(f"opset {opset} is newer than the installed onnx knows (up to {newest}): use "
                             f"--opset {MIN_OPSET[precision]}..{newest}")
    return opset


def max_opset() -> int:
    """The newest default-domain opset the installed onnx package defines (torch's exporter cannot go past it)."""
    import onnx

    return int(onnx.defs.onnx_opset_version())


def graph_opset(proto) -> int:
    return next(int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def torch_to_onnx(module: torch.nn.Module, example: torch.Tensor, input_name: str, opset: int):
    """torch.onnx.export(dynamo=True) -> onnx.ModelProto with a dynamic `batch` dimension, weights inside."""
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    try:
        program = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset, verbose=False,
                                     input_names=[input_name], output_names=[OUTPUT_NAME],
                                     dynamic_shapes=({0: batch},), external_data=False, optimize=True)
    except ImportError as exc:  # the dynamo exporter needs onnxscript; other failures are bugs: traceback
        raise FastCifarError(f"torch.onnx.export needs {exc.name or 'onnxscript'}: pip install onnxscript") from None
    return program.model_proto


def write_onnx(model_path: Path | str, out_path: Path | str | None = None, *, precision: str = "fp32",
               input_kind: str = "raw", opset: int | None = None) -> ExportResult:
    """Export a run dir / model.safetensors to one self-contained ONNX file and run onnx.checker on it.

    out_path: a `.onnx` file, or a directory (default `exported/`) that gets `onnx_file_name(...)`. The parity
    check against PyTorch is the next step (`fastcifar.export.export_onnx` chains both).
    """
    import onnx

    from fastcifar.models import load_model, resolve_model_files

    opset = check_options(precision, input_kind, opset)
    start = time.perf_counter()
    model, spec, model_meta = load_model(model_path)
    out_path = Path(out_path if out_path is not None else "exported").expanduser()
    if out_path.suffix != ".onnx":
        out_path = out_path / onnx_file_name(run_name_of(model_path), precision, input_kind)
    module = ExportModule(model, spec, input_kind, torch_dtype(precision)).eval()
    weights_sha256 = sha256_file(resolve_model_files(model_path)[0])
    refuse_foreign_file(out_path, weights_sha256)
    proto = torch_to_onnx(module, example_input(spec, input_kind), INPUT_NAMES[input_kind], opset)
    if graph_opset(proto) != opset:  # the exporter may convert down silently: say so instead of mislabelling it
        raise FastCifarError(f"torch's ONNX exporter wrote opset {graph_opset(proto)} where {opset} was asked; use "
                             f"--opset {graph_opset(proto)} (or leave --opset out)")
    # source_run names what the file is filed under (<run>-best for the best checkpoint): the INT8 file and the
    # Triton entry derive their names from it, so the best weights never take the final model's names.
    props = onnx_metadata(spec, {**model_meta, "run_name": run_name_of(model_path)},
                          input_kind=input_kind, precision=precision,
                          weights_sha256=weights_sha256)
    set_metadata(proto, props)
    proto.doc_string = f"fastcifar {spec.arch} ({spec.init} init), {precision}, {input_kind} input"
    with atomic_file(out_path) as fh:  # a file object: fileio's writes are the ones a full disk test reaches
        onnx.save_model(proto, fh, save_as_external_data=False)
        fh.flush()
        check_onnx_file(Path(fh.name))
        # A parity record beside the old file describes the old file: it goes the moment the new one lands.
        fileio.remove(parity_path_for(out_path))
    return ExportResult(path=out_path, parity=None, precision=precision, input_kind=input_kind, opset=opset,
                        metadata=decode_metadata(props), size_bytes=out_path.stat().st_size,
                        seconds=round(time.perf_counter() - start, 2))


def parity_path_for(onnx_path: Path) -> Path:
    """Where the parity record of an ONNX file lives: `<name>.parity.json` beside it."""
    return onnx_path.with_suffix(".parity.json")


def refuse_foreign_file(out_path: Path, weights_sha256: str) -> None:
    """Refuse to replace an ONNX file exported from other weights (compare reuses run names like imagenet-f1-s0 in
    every report, so two models can map to one file name). The same model's file is re-exported in place."""
    if not out_path.exists():
        return
    try:
        existing = read_onnx_metadata(out_path).get("source_weights_sha256")
    except FastCifarError:
        existing = None  # not a fastcifar ONNX file: it is not ours to replace either
    if existing != weights_sha256:
        raise FastCifarError(f"{out_path} already exists and was exported from "
                             f"{'other weights' if existing else 'something that is not this model'}; it is kept. "
                             "Export into another --out, or remove it first")


def check_onnx_file(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)  # by path: also works past protobuf's 2 GB
    except Exception as exc:  # noqa: BLE001 - ValidationError / InferenceError
        raise FastCifarError(f"the exported graph fails onnx.checker: {str(exc).splitlines()[0]} "
                             "(a fastcifar bug: please report it)") from None
