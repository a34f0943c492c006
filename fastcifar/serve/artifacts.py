"""Which file each inference backend needs, and the cache that makes it on the fly.

Owns the mapping model path -> artifact kind (`weights`, `onnx`, `engine`) and `ensure_artifact(path, backend)`:
the path itself when it already is what the backend runs, else an ONNX export / TensorRT build cached under
`exported/cache/` (`--cache-dir`), keyed by the SHA-256 of the source files and the conversion settings (reused
exactly while the model is unchanged), built in a temporary directory and renamed into place whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from fastcifar.errors import FastCifarError
from fastcifar.fileio import file_digest, make_dir
from fastcifar.precision import DEFAULT_ENGINE_PROFILE
from fastcifar.rundir import MODEL_FILE

DEFAULT_CACHE_DIR = Path("exported") / "cache"
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
BACKEND_ARTIFACT = {"torch": "weights", "torch-compiled": "weights", "onnxruntime": "onnx", "tensorrt": "engine"}
DEFAULT_BACKEND = {"weights": "torch", "onnx": "onnxruntime", "engine": "tensorrt"}
ARTIFACT_WORDS = {"weights": "a run directory or model.safetensors", "onnx": "an .onnx file",
                  "engine": "a TensorRT engine (.engine/.plan/.trt)"}
# TensorRT optimisation profile of cached engines: min:opt:max batch (bench's default batch sizes fit in it).


def artifact_kind(path: Path | str) -> str:
    """'weights', 'onnx' or 'engine' for `path`; a FastCifarError naming what is accepted otherwise."""
    path = Path(path).expanduser()
    if path.is_dir() or path.suffix == ".safetensors":
        return "weights"
    kinds = {".onnx": "onnx", **{suffix: "engine" for suffix in ENGINE_SUFFIXES}}
    if path.suffix.lower() in kinds:
        return kinds[path.suffix.lower()]
    raise FastCifarError(f"{path} is not a model fastcifar can run: give {', '.join(ARTIFACT_WORDS.values())}")


def model_class_names(path: Path | str) -> tuple[str, ...] | None:
    """The class names a model file carries (model.json, the ONNX metadata or the engine sidecar); None when they
    cannot be read (the loader then says why)."""
    try:
        kind = artifact_kind(path)
        if kind == "weights":
            from fastcifar.models import read_model_meta

            names = read_model_meta(path).get("class_names")
        elif kind == "onnx":
            from fastcifar.export.onnx import read_onnx_metadata

            names = read_onnx_metadata(path).get("class_names")
        else:
            from fastcifar.export.tensorrt import read_engine_sidecar

            names = (read_engine_sidecar(path).get("metadata") or {}).get("class_names")
    except FastCifarError:
        return None
    return tuple(names) if names else None


def _model_metadata(path: Path) -> dict:
    """The fastcifar metadata an .onnx file or engine carries ({} when unreadable)."""
    try:
        if artifact_kind(path) == "onnx":
            from fastcifar.export.onnx import read_onnx_metadata

            return read_onnx_metadata(path)
        from fastcifar.export.tensorrt import read_engine_sidecar

        return read_engine_sidecar(path).get("metadata") or {}
    except FastCifarError:
        return {}


def source_run_dir(path: Path | str) -> Path | None:
    """The run directory whose model.json / config.json describe `path`: the run itself for weights; for an .onnx
    file or engine, the run its metadata names (`source_run`, '-best' for a best checkpoint) when that run is on disk
    here - as named, under runs/, or beside the file. None when it is not: then nothing records the data folder,
    and --data-dir must say it. Best effort: never fails."""
    path = Path(path).expanduser()
    try:
        if artifact_kind(path) == "weights":
            return path if path.is_dir() else path.parent
    except FastCifarError:
        return None
    name = str(_model_metadata(path).get("source_run") or "")
    names = [name] + ([name[: -len("-best")]] if name.endswith("-best") else [])
    for stem in filter(None, names):
        for candidate in source_run_candidates(path, stem):
            if (candidate / "model.json").is_file() or (candidate / "config.json").is_file():
                return candidate
    return None


def source_run_candidates(path: Path, name: str) -> tuple[Path, ...]:
    """Where the run named `name` that exported `path` may be: as named, under runs/, beside the file, or under the
    runs/ beside the file's folder (exported/<run>.onnx next to runs/<run>)."""
    return Path(name), Path("runs") / name, path.parent / name, path.parent.parent / "runs" / name


def cannot_run(path: Path | str, backend: str) -> str | None:
    """Why `backend` cannot run model `path` at all (a torch backend and an .onnx file: nothing turns ONNX back into
    PyTorch weights), None when it can (directly or through a cached export)."""
    try:
        have, need = artifact_kind(path), BACKEND_ARTIFACT[backend]
    except (FastCifarError, KeyError):
        return None  # ensure_artifact says what is wrong
    if have == need or (have, need) in _CONVERTERS:
        return None
    return f"{backend} runs {ARTIFACT_WORDS[need]}, and {Path(path).name} is {ARTIFACT_WORDS[have]}"


def fingerprint(files: list[Path], settings: dict) -> str:
    """The cache key: a sha256 over the settings and each source file's sha256 (fileio.file_digest)."""
    payload = {"settings": settings, "files": [file_digest(file) for file in files]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _cache_entry(cache_dir: Path, label: str, key: str, filename: str, build: Callable[[Path], Path],
                 describe: dict) -> Path:
    """cache_dir/<label>-<key>/<filename>, built by `build(tmp_dir) -> file` when absent, renamed in whole."""
    final_dir = make_dir(cache_dir, "--cache-dir") / f"{label}-{key[:16]}"
    if (final_dir / filename).is_file():
        return final_dir / filename
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", dir=final_dir.parent))
    try:
        built = Path(build(tmp_dir))
        if built != tmp_dir / filename:
            os.replace(built, tmp_dir / filename)
        (tmp_dir / "cache.json").write_text(json.dumps({**describe, "key": key}, indent=2) + "\n")
        try:
            os.replace(tmp_dir, final_dir)
        except OSError:  # a concurrent run finished the same entry first: theirs is as good as ours
            if not (final_dir / filename).is_file():
                raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return final_dir / filename


def cached_onnx(model: Path | str, cache_dir: Path | str = DEFAULT_CACHE_DIR) -> Path:
    """The fp32 `raw`-input ONNX export of a run directory / model.safetensors, from the cache or exported now."""
    from fastcifar import __version__
    from fastcifar.models import resolve_model_files

    weights, meta = resolve_model_files(model)
    settings = {"to": "onnx", "precision": "fp32", "input_kind": "raw", "fastcifar": __version__}
    key = fingerprint([weights, meta], settings)

    def build(tmp_dir: Path) -> Path:
        from fastcifar.export.onnx import write_onnx

        # No parity check here: whoever asked for the artifact (bench) measures parity against the PyTorch model.
        return write_onnx(weights, tmp_dir / "model.onnx", precision="fp32", input_kind="raw").path

    return _cache_entry(Path(cache_dir), _label(weights), key, "model.onnx", build,
                        {"source": str(weights.resolve()), **settings})


def cached_engine(model: Path | str, cache_dir: Path | str = DEFAULT_CACHE_DIR,
                  batch: str = DEFAULT_ENGINE_PROFILE) -> Path:
    """A TensorRT engine (+ its sidecar) for a run directory / safetensors / .onnx, cached or built now (GPU)."""
    from fastcifar.export.tensorrt import build_engine, current_environment, default_timing_cache, require_tensorrt

    require_tensorrt()
    env = current_environment()
    source = Path(model).expanduser()
    onnx_path = source if artifact_kind(source) == "onnx" else cached_onnx(source, cache_dir)
    # Engines only run with the TensorRT version and GPU type they were built for: both are in the key.
    settings = {"to": "engine", "batch": batch, **env}
    key = fingerprint([onnx_path], settings)
    timing_cache = default_timing_cache(Path(cache_dir), env) if env.get("compute_capability") else False

    def build(tmp_dir: Path) -> Path:
        # The sidecar lands beside the engine as model.engine.json and moves with the directory.
        return Path(build_engine(onnx_path, tmp_dir / "model.engine", batch=batch, timing_cache=timing_cache))

    return _cache_entry(Path(cache_dir), _label(onnx_path), key, "model.engine", build,
                        {"source": str(onnx_path.resolve()), **settings})


def _label(path: Path) -> str:
    """A readable cache-entry prefix: the run directory's name for model.safetensors, else the file stem."""
    return path.parent.name if path.name in (MODEL_FILE, "model.onnx") else path.stem


_CONVERTERS: dict[tuple[str, str], Callable[[Path, Path], Path]] = {
    ("weights", "onnx"): cached_onnx,
    ("weights", "engine"): cached_engine,
    ("onnx", "engine"): cached_engine,
}


def ensure_artifact(path: Path | str, backend: str, cache_dir: Path | str = DEFAULT_CACHE_DIR) -> Path:
    """The file `backend` runs for model `path`: `path` itself, or a cached export/build of it."""
    if backend not in BACKEND_ARTIFACT:
        raise FastCifarError(f"unknown backend '{backend}' (choose from {', '.join(BACKEND_ARTIFACT)})")
    path = Path(path).expanduser()
    have, need = artifact_kind(path), BACKEND_ARTIFACT[backend]
    if have == need:
        return path
    convert = _CONVERTERS.get((have, need))
    if convert is None:
        raise FastCifarError(f"backend '{backend}' runs {ARTIFACT_WORDS[need]}; {path} is {ARTIFACT_WORDS[have]}, "
                             f"which cannot be turned into one (give the run directory instead)")
    return convert(path, Path(cache_dir))
