"""TensorRT engines from fastcifar ONNX files: the build (TensorRT 10 and 11), the sidecar, compatibility checks.

Owns `build_engine` (one strongly typed build for both majors: each layer runs in the ONNX graph's type, INT8 comes
from Q/DQ nodes), the engine's JSON sidecar (`<engine>.json`: TensorRT version, GPU, precision, profile, I/O,
source ONNX hash, metadata) and the checks before deserialising (`check_engine_compatible`, `load_engine`). Only
`build_engine` and `load_engine` import tensorrt, so the rest runs and is tested on a CPU. Which TensorRT works
with which path, and what has not run yet: docs/development.md, "TensorRT and ONNX Runtime versions".
"""

from __future__ import annotations

import hashlib
import re
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from fastcifar import __version__
from fastcifar.errors import FastCifarError
from fastcifar.precision import DEFAULT_ENGINE_PROFILE, ENGINE_PRECISIONS
from fastcifar.fileio import write_bytes, write_json

INSTALL_HINT = ("get it with: pip install --extra-index-url https://pypi.nvidia.com -e '.[trt]' in the fastcifar "
                "checkout (TensorRT comes from NVIDIA's package index, not PyPI), or run in the project's Docker "
                "image, which has it (docker build -t fastcifar .)")
SIDECAR_FORMAT_VERSION = 1
DEFAULT_WORKSPACE_GIB = 4.0


@dataclass(frozen=True)
class Profile:
    """The batch sizes an engine accepts (min..max) and the one it is tuned for (opt)."""

    min: int
    opt: int
    max: int

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


def parse_profile(text: str | Profile) -> Profile:
    """'1:128:512' -> Profile(1, 128, 512); a single 'N' means N:N:N. Needs 1 <= min <= opt <= max."""
    if isinstance(text, Profile):
        return text
    parts = str(text).strip().split(":")
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise FastCifarError(f"--batch must be MIN:OPT:MAX (e.g. {DEFAULT_ENGINE_PROFILE}) or one batch size, got '{text}'")
    lo, opt, hi = (int(p) for p in parts)
    if not 1 <= lo <= opt <= hi:
        raise FastCifarError(f"--batch {text}: need 1 <= MIN <= OPT <= MAX")
    return Profile(lo, opt, hi)


# ---------------------------------------------------------------------------------------------- versions


@dataclass(frozen=True)
class BuildPlan:
    """How to ask a given TensorRT for a given precision."""

    precision: str
    trt_major: int
    strongly_typed: bool
    builder_flags: tuple[str, ...]  # names in trt.BuilderFlag (none: strong typing carries the precision)
    network_flags: tuple[str, ...] = ()  # names in trt.NetworkDefinitionCreationFlag


def trt_major(version: str) -> int:
    match = re.match(r"^(\d+)\.", str(version or ""))
    if not match:
        raise FastCifarError(f"unrecognised TensorRT version '{version}'")
    return int(match.group(1))


MIN_TRT_MAJOR = 10


def precision_plan(trt_version: str, precision: str) -> BuildPlan:
    """The build plan for an ONNX file of `precision` ('fp32' | 'fp16' | 'bf16' | 'int8') on `trt_version`."""
    major = trt_major(trt_version)
    if major < MIN_TRT_MAJOR:
        raise FastCifarError(f"TensorRT {trt_version} is too old: fastcifar builds engines with TensorRT 10 or 11; "
                             + INSTALL_HINT)
    if precision not in ENGINE_PRECISIONS:
        raise FastCifarError(f"unknown precision '{precision}' (expected one of {', '.join(ENGINE_PRECISIONS)})")
    # No precision builder flags: 11 removed BuilderFlag.FP16/BF16/INT8 and 10.12+ deprecates them. 11 is always
    # strongly typed (create_network(0)); 10 is asked with the STRONGLY_TYPED creation flag.
    return BuildPlan(precision, major, strongly_typed=True, builder_flags=(),
                     network_flags=("STRONGLY_TYPED",) if major == 10 else ())


def trt_version() -> str | None:
    """The importable TensorRT's version, or None (not installed, or its libraries are missing)."""
    try:
        import tensorrt as trt
    except Exception:  # noqa: BLE001 - ImportError, OSError (missing .so), the bindings-only wheel's errors
        return None
    return str(getattr(trt, "__version__", "") or "") or None


def require_tensorrt():
    """The tensorrt module, or FastCifarError saying how to install it."""
    if trt_version() is None:
        raise FastCifarError("TensorRT is not installed - " + INSTALL_HINT)
    import tensorrt as trt

    return trt


def current_environment() -> dict:
    """What an engine must match here: TensorRT version, GPU name, compute capability (None when absent)."""
    env = {"tensorrt_version": trt_version(), "gpu_name": None, "compute_capability": None}
    try:
        import torch

        if torch.cuda.is_available():
            index = torch.cuda.current_device()
            major, minor = torch.cuda.get_device_capability(index)
            env.update(gpu_name=torch.cuda.get_device_name(index), compute_capability=f"{major}.{minor}")
    except Exception:  # noqa: BLE001 - a broken CUDA setup reads as "no GPU"
        pass
    return env


def missing_requirements(env: dict) -> list[str]:
    """What keeps this machine from building/running engines, each with how to get it."""
    missing = []
    if env.get("tensorrt_version") is None:
        missing.append("TensorRT is not installed - " + INSTALL_HINT)
    if env.get("gpu_name") is None:
        missing.append("no CUDA GPU is visible - TensorRT builds an engine on the GPU model that will run it")
    return missing


# ---------------------------------------------------------------------------------------------- sidecar


def sidecar_path(engine_path: Path | str) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def onnx_precision(onnx_path: Path | str) -> str:
    """The precision of an ONNX file: its fastcifar metadata, else what its tensors say (Q/DQ -> int8)."""
    import onnx
    from onnx import TensorProto

    from fastcifar.preprocess import META_PREFIX

    proto = onnx.load(str(onnx_path), load_external_data=False)
    recorded = {p.key: p.value for p in proto.metadata_props}.get(META_PREFIX + "precision")
    if recorded:
        return recorded
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node):
        return "int8"
    types = {t.data_type for t in proto.graph.initializer}
    return "bf16" if TensorProto.BFLOAT16 in types else "fp16" if TensorProto.FLOAT16 in types else "fp32"


def onnx_io(onnx_path: Path | str) -> dict:
    """Name, shape (-1 for dynamic) and element type of the ONNX graph's first input and output."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph

    def describe(value):
        tensor = value.type.tensor_type
        return {"name": value.name, "shape": [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim],
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name}

    return {"input": describe(graph.input[0]), "output": describe(graph.output[0])}


def engine_sidecar(onnx_path: Path, engine_bytes: bytes, *, env: dict, plan: BuildPlan, profile: Profile,
                   workspace_gib: float, timing_cache: Path | None, build_seconds: float) -> dict:
    """Everything a consumer needs to trust and feed the engine, without TensorRT (pure: no GPU needed)."""
    import onnx

    from fastcifar.export.onnx import sha256_file
    from fastcifar.preprocess import decode_metadata

    proto_meta = onnx.load(str(onnx_path), load_external_data=False).metadata_props
    return {
        "format_version": SIDECAR_FORMAT_VERSION,
        "engine_sha256": hashlib.sha256(engine_bytes).hexdigest(),
        "tensorrt_version": env["tensorrt_version"], "gpu_name": env["gpu_name"],
        "compute_capability": env["compute_capability"],
        "precision": plan.precision, "strongly_typed": plan.strongly_typed, "builder_flags": list(plan.builder_flags),
        "network_flags": list(plan.network_flags),
        "profile": asdict(profile), "workspace_gib": workspace_gib, **onnx_io(onnx_path),
        "source_onnx": str(Path(onnx_path).resolve()), "source_onnx_sha256": sha256_file(Path(onnx_path)),
        "timing_cache": str(timing_cache) if timing_cache else None, "build_seconds": round(build_seconds, 2),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "fastcifar_version": __version__,
        "metadata": decode_metadata({p.key: p.value for p in proto_meta}),
    }


def read_engine_sidecar(engine_path: Path | str) -> dict:
    """The sidecar of `engine_path` (FastCifarError when missing or unreadable)."""
    import json

    path = sidecar_path(engine_path)
    if not path.is_file():
        raise FastCifarError(f"{engine_path} has no sidecar {path.name}: it was not built by `fastcifar export`. "
                             "Rebuild it: fastcifar export <run dir or .onnx> --trt")
    try:
        sidecar = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FastCifarError(f"{path} is unreadable or not JSON ({exc})") from None
    if not isinstance(sidecar, dict) or sidecar.get("format_version") != SIDECAR_FORMAT_VERSION:
        raise FastCifarError(f"{path} is not a fastcifar engine sidecar (format_version "
                             f"{sidecar.get('format_version') if isinstance(sidecar, dict) else '?'}, "
                             f"expected {SIDECAR_FORMAT_VERSION})")
    return sidecar


def rebuild_command(sidecar: dict) -> str:
    profile = sidecar.get("profile") or {}
    batch = ":".join(str(profile.get(k, "?")) for k in ("min", "opt", "max"))
    return (f"fastcifar export {sidecar.get('source_onnx', '<run dir or .onnx>')} --trt --batch {batch} "
            f"--workspace-gib {sidecar.get('workspace_gib', DEFAULT_WORKSPACE_GIB)}")


def check_engine_compatible(sidecar: dict, current: dict) -> list[str]:
    """Raise FastCifarError when the engine cannot run here; return warnings for what may still work.

    TensorRT refuses an engine from another TensorRT version, and an engine's kernels are compiled for one
    compute capability; another GPU model of the same capability loads but may run slower.
    """
    missing = missing_requirements(current)
    if missing:
        raise FastCifarError("cannot run a TensorRT engine here: " + "; and ".join(missing))

    def describe(env: dict) -> str:
        return f"TensorRT {env.get('tensorrt_version')} on {env.get('gpu_name')} (sm {env.get('compute_capability')})"

    built, here = describe(sidecar), describe(current)
    if sidecar.get("tensorrt_version") != current["tensorrt_version"] or \
            sidecar.get("compute_capability") != current["compute_capability"]:
        raise FastCifarError(f"this engine was built with {built}; this machine has {here}. TensorRT engines only run "
                             f"with the TensorRT version and GPU type they were built for. Rebuild it here: "
                             f"{rebuild_command(sidecar)}")
    if sidecar.get("gpu_name") != current["gpu_name"]:
        return [f"engine built on {sidecar.get('gpu_name')}, running on {current['gpu_name']} (same compute "
                f"capability): it loads, but its kernels were timed on the other GPU. For full speed: "
                f"{rebuild_command(sidecar)}"]
    return []


# ---------------------------------------------------------------------------------------------- build / load


def default_timing_cache(directory: Path, env: dict) -> Path:
    """One cache per TensorRT version and compute capability: TensorRT rejects caches from other ones."""
    cc = str(env["compute_capability"]).replace(".", "")
    return directory / f"trt-timing-{env['tensorrt_version']}-sm{cc}.cache"


def network_flags(trt, plan: BuildPlan) -> int:
    """The create_network bit mask for `plan` (explicit batch is the only mode in both majors)."""
    return sum(1 << int(getattr(trt.NetworkDefinitionCreationFlag, name)) for name in plan.network_flags)


def _parse_onnx(trt, builder, logger, onnx_path: Path, plan: BuildPlan):
    network = builder.create_network(network_flags(trt, plan))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise FastCifarError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    return network, parser  # the parser must outlive the network's use in the build


def _builder_config(trt, builder, network, plan: BuildPlan, profile: Profile, workspace_gib: float,
                    cache_bytes: bytes):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    tensor = network.get_input(0)
    dims = tuple(tensor.shape)[1:]
    shapes = builder.create_optimization_profile()
    shapes.set_shape(tensor.name, (profile.min, *dims), (profile.opt, *dims), (profile.max, *dims))
    config.add_optimization_profile(shapes)
    if not config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False):
        # A cache from another GPU or TensorRT is refused (False); the build then has none and the cache could not
        # be written afterwards. Start a fresh one and say so.
        print("TensorRT refused the timing cache (made on another GPU or TensorRT version): building with a fresh "
              "one, which replaces it", file=sys.stderr)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return config


def build_engine(onnx_path: Path | str, engine_path: Path | str | None = None, *, batch: str | Profile = DEFAULT_ENGINE_PROFILE,
                 workspace_gib: float = DEFAULT_WORKSPACE_GIB, timing_cache: Path | str | bool | None = None,
                 int8_calibration=None) -> Path:
    """Build a serialized TensorRT engine (+ sidecar) from a fastcifar ONNX file; returns the engine path.

    engine_path: default `<onnx without .onnx>.engine` beside it. timing_cache: a file (kept and reused),
    None for the default `trt-timing-<version>-sm<cc>.cache` beside the engine, False for none.
    int8_calibration: a quantize.Int8Calibration to turn an fp32 file into a Q/DQ one first.
    Raises FastCifarError naming what is missing (TensorRT, GPU) and how to get it.
    """
    onnx_path, profile = Path(onnx_path), parse_profile(batch)
    if not onnx_path.is_file():
        raise FastCifarError(f"{onnx_path} does not exist")
    env = current_environment()
    missing = missing_requirements(env)
    if missing:
        raise FastCifarError("--trt: no TensorRT engine built: " + "; and ".join(missing)
                             + f". {onnx_path} is kept; on a GPU machine with TensorRT run: fastcifar export "
                             f"{onnx_path} --trt --batch {profile}")
    if int8_calibration is not None and onnx_precision(onnx_path) != "int8":
        from fastcifar.export.quantize import quantize_int8

        c = int8_calibration
        onnx_path = quantize_int8(onnx_path, c.model_path, n_images=c.n_images, data_dir=c.data_dir).path
    trt = require_tensorrt()
    plan = precision_plan(env["tensorrt_version"], onnx_precision(onnx_path))
    engine_path = Path(engine_path) if engine_path else onnx_path.with_suffix(".engine")
    cache_path = None if timing_cache is False else \
        Path(timing_cache) if timing_cache not in (None, True) else default_timing_cache(engine_path.parent, env)
    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except TypeError as exc:  # "factory function returned nullptr" after a CUDA initialisation failure
        raise FastCifarError(f"TensorRT could not initialise CUDA ({exc}); check the NVIDIA driver") from None
    network, _parser = _parse_onnx(trt, builder, logger, onnx_path, plan)
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    config = _builder_config(trt, builder, network, plan, profile, workspace_gib, cache_bytes)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise FastCifarError(f"TensorRT failed to build an engine from {onnx_path.name} (its log is above); a "
                             "larger --workspace-gib or a smaller --batch MAX may help")
    engine_bytes = bytes(memoryview(serialized))
    cache = config.get_timing_cache() if cache_path else None
    if cache is not None:
        # the config's cache now also holds this build's timings: the next build of a similar net is faster
        write_bytes(cache_path, bytes(memoryview(cache.serialize())))
    write_bytes(engine_path, engine_bytes)
    write_json(sidecar_path(engine_path), engine_sidecar(
        onnx_path, engine_bytes, env=env, plan=plan, profile=profile, workspace_gib=workspace_gib,
        timing_cache=cache_path, build_seconds=time.perf_counter() - start))
    return engine_path


def load_engine(engine_path: Path | str):
    """(ICudaEngine, sidecar, warnings) after the sidecar checks; FastCifarError with the rebuild command."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise FastCifarError(f"{engine_path} does not exist")
    sidecar = read_engine_sidecar(engine_path)
    warnings = check_engine_compatible(sidecar, current_environment())
    data = engine_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sidecar.get("engine_sha256"):
        raise FastCifarError(f"{engine_path} does not match its sidecar (changed or rebuilt without it). "
                             f"Rebuild: {rebuild_command(sidecar)}")
    trt = require_tensorrt()
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(data)
    if engine is None:
        raise FastCifarError(f"TensorRT could not deserialise {engine_path}. Rebuild: {rebuild_command(sidecar)}")
    return engine, sidecar, warnings
