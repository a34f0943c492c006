"""An NVIDIA Triton Inference Server model repository from fastcifar's exports (`fastcifar export --triton-repo DIR`).

Owns the repository layout (`DIR/<stem>_onnx/`, `DIR/<stem>_trt/` with `labels.txt` and `1/model.onnx|plan`) and
each entry's `config.pbtxt`, whose tensors come from the ONNX graph (or the engine's sidecar) and whose `parameters`
carry the fastcifar metadata. The text is written here without Triton's protobuf classes, so the runtime needs no
tritonclient (the tests parse it with them). Entries are written atomically, config.pbtxt last; another model's
entry is never replaced. Entry point: `write_repository`. What a user sees: docs/inference.md.
"""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path

from fastcifar import __version__
from fastcifar.errors import FastCifarError
from fastcifar.export.tensorrt import parse_profile
from fastcifar.fileio import atomic_path, file_digest, write_text
from fastcifar.precision import DEFAULT_ENGINE_PROFILE
from fastcifar.preprocess import META_PREFIX

ONNX_PLATFORM = "onnxruntime_onnx"
TRT_PLATFORM = "tensorrt_plan"
ONNX_SUFFIX, TRT_SUFFIX = "_onnx", "_trt"
VERSION = "1"  # every entry holds one model version
INSTANCE_KINDS = ("gpu", "cpu")
# An ONNX graph's batch dimension is dynamic (up to 2^20), so its limit is a choice: the MAX of fastcifar's default
# TensorRT profile, so the ONNX and TensorRT entries of one export accept the same requests (1024 raw images are
# 3 MiB in, 40 KiB of logits out). --triton-max-batch changes it.
DEFAULT_ONNX_MAX_BATCH = parse_profile(DEFAULT_ENGINE_PROFILE).max
DEFAULT_ONNX_PREFERRED_BATCH = parse_profile(DEFAULT_ENGINE_PROFILE).opt
# How long Triton holds a request to batch it with others (Triton's own default is 0: no waiting).
MAX_QUEUE_DELAY_US = 100
# numpy dtype names (tensorrt.onnx_io, the engine sidecar) -> Triton's DataType
TRITON_TYPES = {"uint8": "TYPE_UINT8", "int8": "TYPE_INT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
                "bool": "TYPE_BOOL", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "float32": "TYPE_FP32",
                "float64": "TYPE_FP64"}
INPUT_FORMATS = {"raw": "FORMAT_NHWC", "normalized": "FORMAT_NCHW"}  # the input layout each --input kind has
IDENTITY_KEY = META_PREFIX + "source_weights_sha256"  # the parameter that says which weights an entry holds
PREPROCESSING = {
    "raw": "uint8 RGB pixels 0-255, NHWC [batch, 32, 32, 3]; the graph normalises them ((x / 255 - mean) / std, "
           "mean/std on the 0-1 scale) and resizes them (bilinear) to image_size when that is not 32",
    "normalized": "float32 NCHW [batch, 3, image_size, image_size], already normalised: (x / 255 - mean) / std "
                  "with mean/std on the 0-1 scale, RGB",
}


@dataclass
class TritonEntry:
    """One model directory of the repository."""

    name: str
    platform: str
    path: Path  # DIR/<name>
    max_batch_size: int

    def to_dict(self) -> dict:
        return {"name": self.name, "platform": self.platform, "path": str(self.path),
                "config": str(self.path / "config.pbtxt"), "max_batch_size": self.max_batch_size}


# ---------------------------------------------------------------------------------------------- options


def check_options(*, max_batch: int | None, instance_kind: str, trt: bool, batch: str) -> None:
    """One message for a Triton option that cannot work, before any export work (the profile is --batch's)."""
    if instance_kind not in INSTANCE_KINDS:
        raise FastCifarError(f"--triton-instance-kind must be one of {', '.join(INSTANCE_KINDS)}, got "
                             f"'{instance_kind}'")
    if max_batch is not None and max_batch < 1:
        raise FastCifarError(f"--triton-max-batch must be >= 1, got {max_batch}")
    if trt:
        profile = parse_profile(batch)
        if profile.min != 1:
            raise FastCifarError(f"--triton-repo with --trt needs an engine profile starting at 1 (--batch "
                                 f"1:{profile.opt}:{profile.max}): Triton sends any batch from 1 to max_batch_size, "
                                 f"and the engine refuses fewer than {profile.min} images")
        if max_batch is not None and max_batch > profile.max:
            raise FastCifarError(f"--triton-max-batch {max_batch} is larger than the engine profile's MAX "
                                 f"{profile.max} (--batch {profile}): the plan cannot run such batches. Lower "
                                 f"--triton-max-batch, or raise --batch's MAX")


def entry_name(stem: str, platform: str) -> str:
    return stem + (ONNX_SUFFIX if platform == ONNX_PLATFORM else TRT_SUFFIX)


def planned_entries(model: Path, out_dir: Path, *, is_onnx_file: bool, onnx: bool, trt: bool, precision: str,
                    input_kind: str, int8: bool) -> tuple[list[str], str | None]:
    """(entry names, source weights sha256) an export will write, known before it runs, to refuse a foreign
    entry before minutes of work. The names follow the export's file names; writing checks again."""
    from fastcifar.export import onnx as onnx_export

    if is_onnx_file:
        meta = onnx_export.read_onnx_metadata(model)
        stems, sha = [model.stem], meta.get("source_weights_sha256") or None
    else:
        from fastcifar.models import resolve_model_files

        fp_stem = onnx_export.default_onnx_path(model, out_dir, precision, input_kind).stem
        stems = [fp_stem] if onnx or not int8 else []
        if int8:  # quantize.py's name for the Q/DQ file
            source_run = onnx_export.run_name_of(model) or fp_stem
            stems.append(Path(onnx_export.onnx_file_name(source_run, "int8", input_kind)).stem)
        sha = file_digest(resolve_model_files(model)[0])
    names = [entry_name(stem, ONNX_PLATFORM) for stem in stems]
    if trt:
        names.append(entry_name(stems[-1], TRT_PLATFORM))  # the engine is built from the last ONNX file
    return names, sha


# ---------------------------------------------------------------------------------------------- entries on disk


def recorded_weights(entry_dir: Path) -> str | None:
    """The source weights sha256 an existing entry's config.pbtxt records (None: no config, or not fastcifar's)."""
    try:
        text = (entry_dir / "config.pbtxt").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = re.search(r'key:\s*"' + re.escape(IDENTITY_KEY) + r'"\s*value\s*:?\s*\{\s*string_value:\s*"([0-9a-f]+)"',
                      text)
    return match.group(1) if match else None


def refuse_foreign_entry(entry_dir: Path, weights_sha256: str | None) -> None:
    """Refuse to write into an existing, non-empty entry unless it holds the same weights (then it is re-exported
    in place): two models must never share a name in a repository a server loads."""
    if not entry_dir.exists() or (entry_dir.is_dir() and not any(entry_dir.iterdir())):
        return
    existing = recorded_weights(entry_dir) if entry_dir.is_dir() else None
    if existing is None or weights_sha256 is None or existing != weights_sha256:
        what = "a model exported from other weights" if existing else "something fastcifar did not write"
        raise FastCifarError(f"Triton model {entry_dir} already exists and holds {what}; it is kept. Write into "
                             "another --triton-repo, or remove it first")


def refuse_foreign_entries(repo: Path, names: list[str], weights_sha256: str | None) -> None:
    for name in names:
        refuse_foreign_entry(Path(repo).expanduser() / name, weights_sha256)


# ---------------------------------------------------------------------------------------------- config.pbtxt


def quote(text: str) -> str:
    """A protobuf text-format string literal: quotes, backslashes and control characters escaped, non-ASCII as
    octal UTF-8 bytes (the file stays ASCII; Triton's C++ parser and Python's text_format read both)."""
    out = []
    for ch in str(text):
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif 0x20 <= ord(ch) < 0x7F:
            out.append(ch)
        else:
            out.extend(f"\\{byte:03o}" for byte in ch.encode("utf-8"))
    return '"' + "".join(out) + '"'


def tensor_spec(io: dict, what: str) -> tuple[str, list[int]]:
    """(Triton data type, dims without the batch dimension) of one tensor of onnx_io()/the sidecar."""
    dtype = TRITON_TYPES.get(str(io.get("dtype")))
    shape = [int(d) for d in io.get("shape") or []]
    if dtype is None:
        raise FastCifarError(f"the {what} {io.get('name')} has type {io.get('dtype')}, which has no Triton type")
    if len(shape) < 2 or any(d <= 0 for d in shape[1:]):
        raise FastCifarError(f"the {what} {io.get('name')} has shape {shape}: Triton needs a batch dimension and "
                             "fixed sizes after it")
    return dtype, shape[1:]


def metadata_parameters(meta: dict) -> dict:
    """The fastcifar metadata as Triton parameters (string values: strings as they are, the rest JSON, as in the
    ONNX file's metadata_props), plus the preprocessing in words."""
    params = {META_PREFIX + k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    kind = meta.get("input_kind")
    if kind in PREPROCESSING:
        params[META_PREFIX + "preprocessing"] = PREPROCESSING[kind]
    params[META_PREFIX + "written_by"] = f"fastcifar {__version__}"
    return params


def _dims(values) -> str:
    return "[ " + ", ".join(str(int(v)) for v in values) + " ]"


def render_config(*, name: str, platform: str, max_batch: int, inputs: dict, outputs: dict, input_kind: str | None,
                  preferred: int, instance_kind: str, parameters: dict, comments: list[str]) -> str:
    """config.pbtxt text for one entry (one input, one output: fastcifar's graphs)."""
    in_type, in_dims = tensor_spec(inputs, "input")
    out_type, out_dims = tensor_spec(outputs, "output")
    layout = INPUT_FORMATS.get(input_kind) if len(in_dims) == 3 else None  # Triton allows a format on 3-D only
    lines = [f"# {line}" for comment in comments
             for line in textwrap.wrap(comment, 114, break_long_words=False, break_on_hyphens=False)]
    lines += [f"name: {quote(name)}", f"platform: {quote(platform)}", f"max_batch_size: {int(max_batch)}",
              "input [", "  {", f"    name: {quote(inputs['name'])}", f"    data_type: {in_type}"]
    if layout:
        lines.append(f"    format: {layout}")
    lines += [f"    dims: {_dims(in_dims)}", "  }", "]",
              "output [", "  {", f"    name: {quote(outputs['name'])}", f"    data_type: {out_type}",
              f"    dims: {_dims(out_dims)}", '    label_filename: "labels.txt"', "  }", "]",
              "dynamic_batching {", f"  preferred_batch_size: [ {int(min(preferred, max_batch))} ]",
              f"  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}", "}",
              "instance_group [", "  {", "    count: 1", f"    kind: KIND_{instance_kind.upper()}", "  }", "]"]
    for key, value in parameters.items():
        lines.append(f"parameters {{ key: {quote(key)} value: {{ string_value: {quote(value)} }} }}")
    return "\n".join(lines) + "\n"


def _kind_comment(instance_kind: str) -> str:
    if instance_kind == "gpu":
        return ("KIND_GPU: the server needs a GPU; a CPU-only Triton needs KIND_CPU (export with "
                "--triton-instance-kind cpu, ONNX entries only)")
    return "KIND_CPU: ONNX Runtime on the server's CPU (export with --triton-instance-kind gpu for the GPU)"


def onnx_config(onnx_path: Path | str, name: str, *, max_batch: int | None = None,
                instance_kind: str = "gpu") -> str:
    """config.pbtxt of a fastcifar ONNX file served by Triton's ONNX Runtime backend."""
    from fastcifar.export.onnx import read_onnx_metadata, sha256_file
    from fastcifar.export.tensorrt import onnx_io

    onnx_path = Path(onnx_path)
    meta, io = read_onnx_metadata(onnx_path), onnx_io(onnx_path)
    max_batch = DEFAULT_ONNX_MAX_BATCH if max_batch is None else int(max_batch)
    params = metadata_parameters(meta)
    params[META_PREFIX + "source_onnx_sha256"] = sha256_file(onnx_path)
    comments = [f"Triton model configuration written by `fastcifar export --triton-repo` (fastcifar {__version__}) "
                f"from {onnx_path.name}: {meta.get('precision')} graph, {meta.get('input_kind')} input.",
                f"max_batch_size {max_batch}: the graph's batch dimension is dynamic; "
                + ("the default is the MAX of fastcifar's default TensorRT profile "
                   f"({DEFAULT_ENGINE_PROFILE}), so the ONNX and TensorRT entries take the same requests "
                   "(--triton-max-batch changes it)." if max_batch == DEFAULT_ONNX_MAX_BATCH
                   else "set with --triton-max-batch."),
                _kind_comment(instance_kind)]
    return render_config(name=name, platform=ONNX_PLATFORM, max_batch=max_batch, inputs=io["input"],
                         outputs=io["output"], input_kind=meta.get("input_kind"),
                         preferred=DEFAULT_ONNX_PREFERRED_BATCH, instance_kind=instance_kind, parameters=params,
                         comments=comments)


def trt_config(sidecar: dict, name: str, *, max_batch: int | None = None) -> str:
    """config.pbtxt of a fastcifar TensorRT plan (its JSON sidecar says everything needed; no TensorRT here)."""
    profile = sidecar.get("profile") or {}
    try:
        low, opt, high = (int(profile[k]) for k in ("min", "opt", "max"))
    except (KeyError, TypeError, ValueError):
        raise FastCifarError(f"the engine sidecar has no usable profile ({profile!r}): rebuild the engine with "
                             "fastcifar export --trt") from None
    if low != 1:
        raise FastCifarError(f"the engine's profile {low}:{opt}:{high} starts at {low}: Triton sends batches from 1; "
                             f"rebuild it with --batch 1:{opt}:{high}")
    max_batch = high if max_batch is None else int(max_batch)
    if max_batch > high:
        raise FastCifarError(f"--triton-max-batch {max_batch} is larger than the engine profile's MAX {high}")
    meta = dict(sidecar.get("metadata") or {})
    meta["precision"] = sidecar.get("precision") or meta.get("precision")
    params = metadata_parameters(meta)
    version = sidecar.get("tensorrt_version")
    params.update({META_PREFIX + "tensorrt_version": str(version),
                   META_PREFIX + "gpu_name": str(sidecar.get("gpu_name")),
                   META_PREFIX + "compute_capability": str(sidecar.get("compute_capability")),
                   META_PREFIX + "profile": f"{low}:{opt}:{high}",
                   META_PREFIX + "engine_sha256": str(sidecar.get("engine_sha256")),
                   META_PREFIX + "source_onnx_sha256": str(sidecar.get("source_onnx_sha256"))})
    comments = [f"Triton model configuration written by `fastcifar export --triton-repo` (fastcifar {__version__}) "
                f"for a raw TensorRT plan: {sidecar.get('precision')}, built with TensorRT {version} on "
                f"{sidecar.get('gpu_name')} (sm {sidecar.get('compute_capability')}).",
                f"The Triton container's TensorRT must be {version} and its GPU of compute capability "
                f"{sidecar.get('compute_capability')}: a plan only loads where it was built.",
                f"max_batch_size {max_batch}: at most the engine profile's MAX ({low}:{opt}:{high}); "
                f"preferred batch = the profile's OPT, the size the engine was tuned for.",
                "KIND_GPU: a TensorRT plan runs on the GPU only."]
    return render_config(name=name, platform=TRT_PLATFORM, max_batch=max_batch, inputs=sidecar["input"],
                         outputs=sidecar["output"], input_kind=meta.get("input_kind"), preferred=opt,
                         instance_kind="gpu", parameters=params, comments=comments)


# ---------------------------------------------------------------------------------------------- writing


def _copy(src: Path, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)


def _write_entry(entry_dir: Path, model_src: Path, model_file: str, config: str, class_names) -> None:
    """Model, labels, then config.pbtxt last: a server polling the repository never sees a config without its
    model."""
    _copy(model_src, entry_dir / VERSION / model_file)
    write_text(entry_dir / "labels.txt", "".join(f"{label}\n" for label in class_names or []))
    write_text(entry_dir / "config.pbtxt", config)


def write_onnx_entry(repo: Path | str, onnx_path: Path | str, *, max_batch: int | None = None,
                     instance_kind: str = "gpu") -> TritonEntry:
    from fastcifar.export.onnx import read_onnx_metadata

    onnx_path = Path(onnx_path)
    meta = read_onnx_metadata(onnx_path)
    name = entry_name(onnx_path.stem, ONNX_PLATFORM)
    entry_dir = Path(repo).expanduser() / name
    refuse_foreign_entry(entry_dir, meta.get("source_weights_sha256"))
    config = onnx_config(onnx_path, name, max_batch=max_batch, instance_kind=instance_kind)
    _write_entry(entry_dir, onnx_path, "model.onnx", config, meta.get("class_names"))
    return TritonEntry(name, ONNX_PLATFORM, entry_dir,
                       DEFAULT_ONNX_MAX_BATCH if max_batch is None else int(max_batch))


def write_trt_entry(repo: Path | str, engine_path: Path | str, *, max_batch: int | None = None) -> TritonEntry:
    from fastcifar.export.tensorrt import read_engine_sidecar

    engine_path = Path(engine_path)
    sidecar = read_engine_sidecar(engine_path)
    meta = sidecar.get("metadata") or {}
    name = entry_name(engine_path.stem, TRT_PLATFORM)
    entry_dir = Path(repo).expanduser() / name
    refuse_foreign_entry(entry_dir, meta.get("source_weights_sha256"))
    config = trt_config(sidecar, name, max_batch=max_batch)
    _write_entry(entry_dir, engine_path, "model.plan", config, meta.get("class_names"))
    return TritonEntry(name, TRT_PLATFORM, entry_dir,
                       int(sidecar["profile"]["max"]) if max_batch is None else int(max_batch))


def write_repository(repo: Path | str, onnx_paths, engine_path: Path | str | None = None, *,
                     max_batch: int | None = None, instance_kind: str = "gpu") -> list[TritonEntry]:
    """One entry per ONNX file, and one for the engine when there is one. Every entry is checked for a foreign
    occupant before the first is written."""
    from fastcifar.export.onnx import read_onnx_metadata
    from fastcifar.export.tensorrt import read_engine_sidecar

    repo = Path(repo).expanduser()
    onnx_paths = [Path(p) for p in onnx_paths]
    for path in onnx_paths:
        refuse_foreign_entry(repo / entry_name(path.stem, ONNX_PLATFORM),
                             read_onnx_metadata(path).get("source_weights_sha256"))
    if engine_path is not None:
        engine_path = Path(engine_path)
        refuse_foreign_entry(repo / entry_name(engine_path.stem, TRT_PLATFORM),
                             (read_engine_sidecar(engine_path).get("metadata") or {}).get("source_weights_sha256"))
    entries = [write_onnx_entry(repo, path, max_batch=max_batch, instance_kind=instance_kind) for path in onnx_paths]
    if engine_path is not None:
        entries.append(write_trt_entry(repo, engine_path, max_batch=max_batch))
    return entries


def docker_command(repo: Path | str) -> str:
    """The command that serves the repository with NVIDIA's Triton container (pick the release whose TensorRT
    matches the plans'). Not run by fastcifar."""
    return (f"docker run --gpus all --rm -p8000:8000 -p8001:8001 -p8002:8002 -v {Path(repo).expanduser().resolve()}"
            ":/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models")
