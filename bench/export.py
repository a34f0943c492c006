"""Export suite: what each export precision costs and buys - export/build time, file size, parity, speed.

Question: for one trained run and each graph precision (fp32, fp16, bf16, INT8 Q/DQ), how long does the export
take (on a GPU also the TensorRT build, cold and with a warm timing cache), how big are the files, do they make the
same decisions as the PyTorch fp32 model on real test images, and what throughput do ONNX Runtime and TensorRT reach
against torch eager on the same device? Speed comes from `fastcifar bench` (a process per backend); on the CPU an
interleaved in-process measurement adds a ratio that holds on a busy machine.

    python bench/export.py --model runs/<trained run> --data-dir ~/data/cifar10
    python bench/export.py --model runs/<run> --precisions fp32,int8 --batch-sizes 1,256   # a subset

Writes bench/results/export-<device>.json and .md and prints the markdown (bench/README.md, "Export").
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from fastcifar.errors import FastCifarError  # noqa: E402
from fastcifar.fileio import write_json, write_text  # noqa: E402
from fastcifar.precision import DEFAULT_ENGINE_PROFILE, ENGINE_PRECISIONS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# ONNX Runtime precisions worth timing per device: the CPU has no bf16 kernels; on CUDA, bf16 Conv is patchy.
_NO_BF16 = tuple(p for p in ENGINE_PRECISIONS if p != "bf16")  # fp32, fp16, int8
ORT_PRECISIONS = {"cpu": _NO_BF16, "cuda": _NO_BF16}


def make_artifacts(args) -> list[dict]:
    """ONNX files (and engines where possible), one record per precision with sizes, times and parity."""
    from fastcifar.export import export_onnx
    from fastcifar.export.parity import verify_onnx, write_parity
    from fastcifar.export.quantize import quantize_int8

    records, by_precision = [], {}
    for precision in args.precisions:
        start = time.perf_counter()
        # verify=False, then the check by hand: a failed check is a result to record, not a reason to stop
        if precision == "int8":
            fp32 = by_precision.get("fp32") or export_onnx(args.model, args.out, verify=False,
                                                           data_dir=args.data_dir).path
            result = quantize_int8(fp32, args.model, n_images=args.int8_calib_images, data_dir=args.data_dir,
                                   verify=False)
        else:
            result = export_onnx(args.model, args.out, precision=precision, data_dir=args.data_dir, verify=False)
        by_precision[precision] = result.path
        p = verify_onnx(result.path, args.model, args.data_dir, max_images=args.verify_images)
        write_parity(result.path, p)
        records.append({"precision": precision, "onnx": str(result.path), "onnx_mb": result.size_bytes / 1e6,
                        "export_s": result.seconds, "export_and_check_s": time.perf_counter() - start,
                        "opset": result.opset,
                        "parity": {k: p[k] for k in ("passed", "max_abs_diff", "top1_agreement", "torch_accuracy",
                                                     "onnx_accuracy", "n_images", "runtime", "emulated")}})
    return records


def build_engines(records: list[dict], args) -> str | None:
    """Add a TensorRT engine to each record (cold and warm-cache build times); returns why not, if not."""
    from fastcifar.export import tensorrt as trtx

    missing = trtx.missing_requirements(trtx.current_environment())
    if missing:
        return "; ".join(missing)
    for record in records:
        cache = Path(args.out) / f"bench-timing-{record['precision']}.cache"
        cache.unlink(missing_ok=True)
        times = []
        for _ in range(2):  # cold timing cache, then warm: what the cache under exported/ saves
            start = time.perf_counter()
            engine = trtx.build_engine(record["onnx"], batch=args.trt_batch, timing_cache=cache)
            times.append(time.perf_counter() - start)
        record.update(engine=str(engine), engine_mb=engine.stat().st_size / 1e6, build_cold_s=times[0],
                      build_warm_s=times[1])
    return None


def measure(models: list[str], backends: tuple[str, ...], args) -> list[dict]:
    from fastcifar.bench.harness import BenchConfig, bench

    if not models:
        return []
    cfg = BenchConfig(models=tuple(models), backends=backends, batch_sizes=tuple(args.batch_sizes),
                      data_dir=args.data_dir, download=False, device=args.device, max_images=args.verify_images,
                      reference=str(args.model), results_dir=None, min_time_s=args.min_time)
    return bench(cfg, log=lambda message: print(f"  {message}", file=sys.stderr)).rows


def speed_rows(records: list[dict], device_type: str, args) -> list[dict]:
    rows = [{"label": "torch eager fp32", **r} for r in measure([str(args.model)], ("torch",), args)]
    onnx = {r["precision"]: r["onnx"] for r in records if r["precision"] in ORT_PRECISIONS[device_type]}
    for precision, row in zip(onnx, measure(list(onnx.values()), ("onnxruntime",), args)):
        rows.append({"label": f"onnxruntime {precision}", **row})
    engines = {r["precision"]: r["engine"] for r in records if "engine" in r}
    for precision, row in zip(engines, measure(list(engines.values()), ("tensorrt",), args)):
        rows.append({"label": f"tensorrt {precision}", **row})
    return rows


def interleaved(records: list[dict], args, rounds: int = 7, batch: int = 256) -> dict:
    """Median img/s of torch eager vs ONNX Runtime, timed round-robin in one process.

    On a shared machine the load changes from minute to minute; alternating the backends call by call makes
    them see the same load, so their ratio holds even when the absolute figures do not. Torch runs the very
    computation the raw graph holds (ExportModule: uint8 pixels in, preprocessing inside); ORT threads do not
    spin, so neither steals the other's cores.
    """
    import statistics

    import torch

    from fastcifar.data.cifar import load_split
    from fastcifar.export.onnx import ExportModule
    from fastcifar.export.parity import find_data, make_ort_session
    from fastcifar.models import load_model

    model, spec, meta = load_model(args.model)
    pixels = load_split(find_data(args.data_dir, meta), "test").images[:batch]
    module = ExportModule(model, spec, "raw", torch.float32).eval()
    calls = {"torch eager fp32": lambda: module(torch.from_numpy(pixels))}
    for r in records:
        if r["precision"] in ORT_PRECISIONS["cpu"]:
            session = make_ort_session(Path(r["onnx"]), ["CPUExecutionProvider"])
            calls[f"onnxruntime {r['precision']}"] = lambda s=session: s.run(None, {"pixels": pixels})
    samples = {name: [] for name in calls}
    with torch.inference_mode():
        for name, call in calls.items():
            call()  # warm-up: first-call allocations and ORT's kernel selection
        for _ in range(rounds):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                samples[name].append(batch / (time.perf_counter() - start))
    return {name: {"median_img_s": statistics.median(v), "best_img_s": max(v), "rounds": rounds, "batch": batch,
                   "torch_threads": torch.get_num_threads()} for name, v in samples.items()}


def markdown(report: dict) -> str:
    env, batches = report["env"], report["batch_sizes"]
    lines = [f"Export suite on {env['device']} (load average {env['load_avg_start']:.1f} -> {env['load_avg_end']:.1f}, "
             f"{env['cpu_count']} cores), {report['model']}; torch {env['torch']}, onnxruntime {env['onnxruntime']}, "
             f"TensorRT {env['tensorrt'] or 'not installed'}.", "",
             "| precision | ONNX MB | export s | max abs diff | top-1 agree | acc torch -> onnx | engine MB | "
             "build cold / warm s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["artifacts"]:
        p = r["parity"]
        engine = (f"{r['engine_mb']:.1f} | {r['build_cold_s']:.1f} / {r['build_warm_s']:.1f}" if "engine" in r
                  else "- | -")
        verdict = ("" if p["passed"] else " FAILED") + (" (emulated check)" if p["emulated"] else "")
        lines.append(f"| {r['precision']}{verdict} | {r['onnx_mb']:.1f} | "
                     f"{r['export_s']:.1f} | {p['max_abs_diff']:.3g} | {p['top1_agreement']:.3f} | "
                     f"{p['torch_accuracy']:.3f} -> {p['onnx_accuracy']:.3f} | {engine} |")
    if report["engines_skipped"]:
        lines += ["", f"TensorRT: skipped ({report['engines_skipped']})."]
    lines += ["", "| backend | " + " | ".join(f"img/s @ {b}" for b in batches) + " | batch-1 p50 ms | agree |",
              "|---|" + "---:|" * (len(batches) + 2)]
    for row in report["speed"]:
        if row["status"] != "ok":
            lines.append(f"| {row['label']} | {row['status']}: {row['reason']} |")
            continue
        speeds = " | ".join(f"{row['throughput'].get(str(b), 0):,.0f}" for b in batches)
        latency = (row.get("latency_ms") or {}).get("p50")
        agree = row.get("agreement")
        lines.append(f"| {row['label']} | {speeds} | {latency:.2f} | "
                     f"{'-' if agree is None else f'{agree:.3f}'} |" if latency is not None else
                     f"| {row['label']} | {speeds} | - | - |")
    if report["interleaved"]:
        first = next(iter(report["interleaved"].values()))
        lines += ["", f"Interleaved in one process (batch {first['batch']}, {first['rounds']} rounds, median / best "
                      "img/s; same load for all):", ""]
        lines += [f"- {name}: {v['median_img_s']:,.0f} / {v['best_img_s']:,.0f}"
                  for name, v in report["interleaved"].items()]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="run directory (or model.safetensors)")
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 [default: the run's recorded data dir]")
    parser.add_argument("--out", type=Path, default=REPO / "exported" / "bench", help="artifact directory")
    parser.add_argument("--precisions", default="fp32,fp16,bf16,int8", help="comma-separated [default: all]")
    parser.add_argument("--int8-calib-images", type=int, default=512, help="training images for INT8 [512]")
    parser.add_argument("--verify-images", type=int, default=1000, help="test images for parity [1000]")
    parser.add_argument("--batch-sizes", default=None, help="[default: 1,64,256 on CPU; 1,64,256,1024 on CUDA]")
    parser.add_argument("--trt-batch", default=DEFAULT_ENGINE_PROFILE,
                        help=f"engine profile MIN:OPT:MAX [{DEFAULT_ENGINE_PROFILE}]")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda [auto]")
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds timed per batch size [2]")
    args = parser.parse_args(argv)
    args.precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    return args


def main(argv=None) -> int:
    import torch

    from fastcifar.runtime import env_info

    args = parse_args(argv)
    device_type = "cuda" if args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available()) \
        else "cpu"
    default_batches = {"cpu": "1,64,256", "cuda": "1,64,256,1024"}[device_type]
    args.batch_sizes = [int(b) for b in (args.batch_sizes or default_batches).split(",")]
    load_start = os.getloadavg()[0]
    records = make_artifacts(args)
    skipped = build_engines(records, args) if device_type == "cuda" else "benchmark device is the CPU"
    rows = speed_rows(records, device_type, args)
    paired = interleaved(records, args) if device_type == "cpu" else {}
    env = env_info()
    env.update(device=(env["gpus"][0]["name"] if device_type == "cuda" and env["gpus"] else f"CPU ({env['cpu']})"),
               load_avg_start=load_start, load_avg_end=os.getloadavg()[0])
    report = {"model": str(args.model), "batch_sizes": args.batch_sizes, "env": env, "artifacts": records,
              "engines_skipped": skipped, "speed": rows, "interleaved": paired}
    text = markdown(report)
    write_json(RESULTS / f"export-{device_type}.json", report)
    write_text(RESULTS / f"export-{device_type}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FastCifarError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(1)
