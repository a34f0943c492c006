"""Export: a saved model -> ONNX -> parity check -> optional INT8 Q/DQ ONNX -> optional TensorRT engine.

Owns `export_model(...)`, the one call behind `fastcifar export`, and `export_onnx` (write + verify): they chain the
steps of onnx.py, parity.py, quantize.py, tensorrt.py and triton.py, none of which calls another step except through
here (quantize.py verifies its own INT8 file with parity.py). Import-light (no torch, onnx or tensorrt at import
time) so the CLI and `serve/` can import it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from fastcifar.errors import FastCifarError
from fastcifar.fileio import first_missing, make_dir, remove_empty_dirs, remove_leftovers
from fastcifar.precision import DEFAULT_ENGINE_PROFILE

DEFAULT_OUT_DIR = Path("exported")


@dataclass
class ExportSummary:
    """What one `fastcifar export` produced. `error` says why the TensorRT step stopped (the ONNX files stay)."""

    onnx: list = field(default_factory=list)  # ExportResult per ONNX file written (fp, then int8)
    engine: dict | None = None  # {"path": ..., "sidecar": {...}} when an engine was built
    error: str | None = None
    triton: list = field(default_factory=list)  # triton.TritonEntry per model written with --triton-repo

    def to_dict(self) -> dict:
        return {"onnx": [r.to_dict() for r in self.onnx], "engine": self.engine, "error": self.error,
                "triton": [e.to_dict() for e in self.triton]}


def export_onnx(model_path: Path | str, out_path: Path | str | None = None, *, precision: str = "fp32",
                input_kind: str = "raw", opset: int | None = None, verify: bool = True,
                data_dir: Path | str | None = None, max_images: int | None = None,
                log: Callable[[str], None] = lambda message: None):
    """Write the ONNX file (onnx.py), then, with `verify`, check it against the PyTorch model (parity.py).

    The check compares ONNX Runtime with the fp32 PyTorch model on the first `max_images` (None: all) test images
    of `data_dir` (default: the run's recorded data dir), writes `<name>.parity.json` beside the file and raises
    FastCifarError on a mismatch beyond tolerance (the ONNX file and the parity JSON are kept for inspection).
    Without test data the export fails before anything is written.
    """
    from fastcifar.export import onnx as onnx_export
    from fastcifar.export import parity
    from fastcifar.models import read_model_meta

    test = parity.load_test_split(data_dir, read_model_meta(model_path)) if verify else None
    log(f"writing the ONNX graph ({precision}, {input_kind} input) of {model_path}")
    result = onnx_export.write_onnx(model_path, out_path, precision=precision, input_kind=input_kind, opset=opset)
    if verify:
        n = len(test[0]) if max_images is None else min(max_images, len(test[0]))  # what the check really uses
        log(f"checking {result.path.name} against PyTorch fp32 on {n} test images")
        try:
            result.parity = parity.verify_onnx(result.path, model_path, data_dir, max_images=max_images, test=test)
        except KeyboardInterrupt:
            # An unverified file must not pass for a checked one: it goes, and the user is told.
            result.path.unlink(missing_ok=True)
            raise FastCifarError(f"interrupted during the parity check: removed the unverified {result.path} "
                                 "(export again, or add --no-verify to keep a file without the check)",
                                 exit_code=130) from None
        result.parity_path = parity.write_parity(result.path, result.parity)
        parity.raise_on_mismatch(result)
    return result


def export_model(model: Path | str, *, onnx: bool = True, trt: bool = False, precision: str = "fp32",
                 input_kind: str = "raw", opset: int | None = None, out_dir: Path | str = DEFAULT_OUT_DIR,
                 data_dir: Path | str | None = None, verify: bool = True, max_images: int | None = None,
                 batch: str = DEFAULT_ENGINE_PROFILE, workspace_gib: float = 4.0, int8_calib_images: int = 0,
                 triton_repo: Path | str | None = None, triton_max_batch: int | None = None,
                 triton_instance_kind: str = "gpu",
                 log: Callable[[str], None] = lambda message: None) -> ExportSummary:
    """Export `model` (run dir, model.safetensors, or an .onnx for the TensorRT step alone) as asked.

    Option mistakes (bad --batch, INT8 without a run directory, ...) are raised before anything is written.
    A missing TensorRT or GPU does not raise: it lands in `summary.error` after the ONNX files are written.
    `triton_repo`: also write a Triton model repository there (triton.py): one entry per ONNX file written (or the
    one continued from), one for the engine when built; an existing entry of another model fails the export first.
    `log(message)` hears each step as it starts (the CLI prints them on stderr).
    """
    from fastcifar.export import onnx as onnx_export
    from fastcifar.export import tensorrt

    model, out_dir = Path(model).expanduser(), Path(out_dir).expanduser()
    is_onnx_file = model.suffix == ".onnx"
    if trt:
        tensorrt.parse_profile(batch)  # fail on a bad --batch before minutes of export
    if is_onnx_file and not trt:
        raise FastCifarError(f"{model.name} is already an ONNX file: add --trt to build its TensorRT engine, or "
                             "pass the run directory to export it again")
    if is_onnx_file and int8_calib_images:
        raise FastCifarError("--int8-calib-images needs the run directory (the PyTorch model is the parity "
                             "reference); pass the run, not the .onnx file")
    if int8_calib_images and precision != "fp32":
        raise FastCifarError(f"--int8-calib-images calibrates the fp32 graph (non-quantized layers stay fp32); "
                             f"drop --precision {precision}")
    summary = ExportSummary()
    if onnx and not is_onnx_file:
        onnx_export.check_options(precision, input_kind, opset)  # a bad --opset before --out is created
    if not is_onnx_file:
        from fastcifar.models import resolve_model_files

        resolve_model_files(model)  # a missing or unfinished run is refused before --out is created
    if is_onnx_file or not onnx:  # the ONNX file to continue from must exist before anything is created
        onnx_path = model if is_onnx_file else onnx_export.default_onnx_path(model, out_dir, precision, input_kind)
        if not onnx_path.is_file():
            raise FastCifarError(f"{onnx_path} does not exist" + ("" if is_onnx_file else
                                 ": --no-onnx reuses it, so export it first (drop --no-onnx)"))
        onnx_export.read_onnx_metadata(onnx_path)  # a corrupt or foreign file is refused before any work
    if triton_repo is None and (triton_max_batch is not None or triton_instance_kind != "gpu"):
        raise FastCifarError("--triton-max-batch and --triton-instance-kind shape the Triton repository: add "
                             "--triton-repo DIR")
    if triton_repo is not None:  # option mistakes and another model's entries, before any work
        from fastcifar.export import triton

        triton_repo = Path(triton_repo).expanduser()
        triton.check_options(max_batch=triton_max_batch, instance_kind=triton_instance_kind, trt=trt, batch=batch)
        names, weights_sha256 = triton.planned_entries(model, out_dir, is_onnx_file=is_onnx_file, onnx=onnx, trt=trt,
                                                       precision=precision, input_kind=input_kind,
                                                       int8=bool(int8_calib_images))
        triton.refuse_foreign_entries(triton_repo, names, weights_sha256)
    if (onnx and not is_onnx_file and verify) or int8_calib_images:  # a missing ONNX Runtime before minutes of export
        from fastcifar.extras import require_onnxruntime

        if int8_calib_images:
            require_onnxruntime("INT8 calibration (--int8-calib-images)")
        else:
            require_onnxruntime("export's parity check", "pass --no-verify to export without it")
    created = [first_missing(d) for d in (out_dir, triton_repo) if d is not None]
    try:
        make_dir(out_dir, "--out")  # before minutes of export, not after
        _remove_own_leftovers(out_dir, model.stem if is_onnx_file else onnx_export.run_name_of(model), log)
        if triton_repo is not None:
            make_dir(triton_repo, "--triton-repo")
        _export_steps(summary, model, out_dir, is_onnx_file=is_onnx_file, onnx=onnx, trt=trt, precision=precision,
                      input_kind=input_kind, opset=opset, data_dir=data_dir, verify=verify, max_images=max_images,
                      batch=batch, workspace_gib=workspace_gib, int8_calib_images=int8_calib_images,
                      onnx_path=None if onnx and not is_onnx_file else onnx_path, log=log)
        if triton_repo is not None:
            # the ONNX files this export wrote, else the one it continued from; the engine when one was built
            sources = [r.path for r in summary.onnx] or [onnx_path]
            log(f"writing the Triton model repository {triton_repo}")
            summary.triton = triton.write_repository(
                triton_repo, sources, summary.engine["path"] if summary.engine else None,
                max_batch=triton_max_batch, instance_kind=triton_instance_kind)
    except BaseException:
        for top in created:  # a failed export leaves no empty --out / --triton-repo behind (never one that existed)
            if top is not None:
                remove_empty_dirs(top)
        raise
    return summary


def _remove_own_leftovers(out_dir: Path, name: str, log: Callable[[str], None]) -> None:
    """Remove the temp files a killed export of this model left in `out_dir`: only those of the files this model's
    exports are named (onnx.onnx_file_name: `<name>[-<precision>][-int8][-normalized]` + .onnx, .parity.json,
    .engine, ...), as --out may be shared with other exports, running now, that no lock excludes."""
    import re

    own = re.compile(rf"^{re.escape(name)}(-(fp16|bf16|int8|normalized))*\.")
    removed = remove_leftovers(out_dir, owned=lambda dest: bool(own.match(dest)))
    if removed:
        log(f"removed {len(removed)} temp file(s) a killed export left in {out_dir} ({', '.join(removed)})")


def _export_steps(summary: ExportSummary, model: Path, out_dir: Path, *, is_onnx_file: bool, onnx: bool, trt: bool,
                  precision: str, input_kind: str, opset: int | None, data_dir, verify: bool,
                  max_images: int | None, batch: str, workspace_gib: float, int8_calib_images: int,
                  onnx_path: Path | None, log: Callable[[str], None]) -> None:
    """ONNX (+ parity), then INT8, then the engine, each from the previous file; results land in `summary`."""
    from fastcifar.export import tensorrt

    if onnx and not is_onnx_file:
        result = export_onnx(model, out_dir, precision=precision, input_kind=input_kind, opset=opset,
                             verify=verify, data_dir=data_dir, max_images=max_images, log=log)
        summary.onnx.append(result)
        onnx_path = result.path
    if int8_calib_images:
        from fastcifar.export.quantize import quantize_int8

        log(f"quantizing to INT8 (Q/DQ) with {int8_calib_images} calibration images")
        result = quantize_int8(onnx_path, model, n_images=int8_calib_images, data_dir=data_dir, verify=verify,
                               max_images=max_images)
        summary.onnx.append(result)
        onnx_path = result.path
    if trt:
        log(f"building the TensorRT engine from {onnx_path.name} (batch {batch})")
        try:
            engine = tensorrt.build_engine(onnx_path, batch=batch, workspace_gib=workspace_gib)
            summary.engine = {"path": str(engine), "sidecar": tensorrt.read_engine_sidecar(engine)}
        except FastCifarError as exc:
            summary.error = str(exc)
