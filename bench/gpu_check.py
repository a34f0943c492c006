"""What a GPU machine must show about fastcifar, in one prepared run that fits its time budget (bench/gpu_check.sh
runs this; standard library only, so it starts on a machine that has nothing but torch).

    bash bench/gpu_check.sh DATA_DIR OUT_DIR              # on the GPU machine (budget 480 s)
    bash bench/gpu_check.sh --dry-run DATA_DIR OUT_DIR    # every step at toy sizes on a CPU (no budget cuts)

DATA_DIR holds cifar-10-batches-py/. The steps (setup, gpu-tests, sweep, seed-preset, bench, export, throughput,
loaders) run in order of value, each in its own process group with a share of the time still left; each writes as
it goes, so a step cut by its limit or a signal keeps what it wrote, and summary.md is rewritten after every step.
Steps, shares and what each writes: docs/development.md, "Maintainers: the borrowed GPU check".

Options (or environment): --budget-s (GPU_CHECK_BUDGET_S; 480, dry run 3600), --steps a,b (GPU_CHECK_STEPS),
--wheels DIR (GPU_CHECK_WHEELS; .device-wheels), --previous FILES (GPU_CHECK_PREVIOUS; bench/results/gpu/*/
sweep.jsonl), --tests ARGS (GPU_CHECK_TESTS: what pytest collects instead of the files holding gpu tests). OUT_DIR
must be new or empty; work.tar.gz holds the logs. Exit 0 when every step ran and exited 0, 1 otherwise, 2 on a
usage mistake, 143 when stopped by a signal.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path.insert(0, str(BENCH))

from gpu_check_summary import load_jsonl  # noqa: E402 - standard library only, as this driver
STEPS = (("setup", 3), ("gpu-tests", 12), ("sweep", 40), ("seed-preset", 8), ("bench", 12), ("export", 7),
         ("throughput", 9), ("loaders", 9))
GPU_BUDGET_S, DRY_BUDGET_S = 480, 3600
MIN_STEP_S = 5  # a step given less than this is skipped: it could not even start its interpreter
# Toy sizes of the dry run: the same commands on a few hundred images, the cheap ImageNet stem, no compile.
TOY = ("train_limit=240", "epochs=2", "batch_size=32", "stem=imagenet", "compile=false", "lr=0.05",
       "warmup_epochs=0.4", "val_fraction=0.1")


@dataclass
class Check:
    data: Path
    out: Path
    work: Path
    dry: bool
    python: str
    env: dict
    previous: list[Path]
    tests: list[str] | None
    wheels: Path


# ---------------------------------------------------------------------------------------------- the steps
# Each returns the commands to run in order (argv lists; stdout of each goes to WORK/<step>.out), or a str: why the
# step is skipped.

def setup_step(c: Check):
    return [[c.python, str(BENCH / "gpu_check_setup.py"), "--wheels", str(c.wheels), "--dali-wheels",
             str(c.wheels.with_name(c.wheels.name + "-dali")), "--work", str(c.work), "--out",
             str(c.out / "setup.json"), "--pythonpath-file", str(c.work / "pythonpath")]]


def gpu_tests_step(c: Check, limit: int):
    if not importable(c, "pytest"):
        return "pytest does not import (stage it: make gpu-wheels)"
    files = c.tests if c.tests is not None else sorted(
        str(p) for p in (REPO / "tests").glob("test_*.py") if "pytest.mark.gpu" in p.read_text())
    base = [c.python, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "--rootdir", str(REPO), "-c",
            str(REPO / "setup.cfg"), "--continue-on-collection-errors", "-o", "addopts="]
    base += [] if c.tests is not None else ["-m", "gpu"]
    if importable(c, "pytest_timeout"):  # a test that hangs costs its own limit, not the step's
        base += ["--timeout", str(max(20, limit // 3))]
    if importable(c, "pytest_reportlog"):  # one JSON line per test phase, written as each ends
        return [base + ["--report-log", str(c.out / "gpu-tests.jsonl"), *files]]
    # Without the plugin, one process per test file, each with its own JUnit file: a cut keeps the files before.
    return [base + ["--junitxml", str(c.work / f"gpu-tests-{Path(f).stem}.xml"), f] for f in files]


def sweep_cmd(c: Check, plan: str, budget: int) -> list[str]:
    cmd = [c.python, str(BENCH / "sweep.py"), "--data-dir", str(c.data), "--plan", str(BENCH / "plans" / plan),
           "--jsonl", str(c.out / "sweep.jsonl"), "--epochs-jsonl", str(c.out / "epochs.jsonl"),
           "--device", "cpu" if c.dry else "auto", "--runs-dir", str(c.work / "runs"),
           "--budget-s", str(max(budget - 10, 1))]  # room to start the interpreter and read the data
    if c.previous:
        cmd += ["--previous", *map(str, c.previous)]
    for pair in TOY if c.dry else ():
        cmd += ["--set", pair]
    return cmd


def sweep_step(c: Check, limit: int):
    return [sweep_cmd(c, "dry-run.json" if c.dry else "gpu.json", limit)]


def seed_preset_step(c: Check, limit: int):
    return [sweep_cmd(c, "seed.json", limit)]


def best_model(c: Check) -> str | None:
    """The run directory of this check's most accurate finished run (sweep or seed preset), if one is on disk."""
    best = None
    for line in load_jsonl(c.out / "sweep.jsonl"):
        if line.get("status") == "finished" and line.get("run_dir") and Path(line["run_dir"], "model.json").is_file():
            if best is None or line["test_acc"] > best["test_acc"]:
                best = line
    return best["run_dir"] if best else None


def model_or_train(c: Check) -> tuple[str, list[list[str]]]:
    """A model to serve and export: the check's best run, else a short training of its own (every run the plans
    ask for may have been measured by an earlier GPU run, so none trained here)."""
    model = best_model(c)
    if model:
        return model, []
    model = str(c.work / "model")
    cmd = [c.python, "-m", "fastcifar", "train", "--data-dir", str(c.data), "--no-download", "--preset", "fast",
           "--epochs", "3", "--no-compile", "--out", model, "--device", "cpu" if c.dry else "auto"]
    if c.dry:
        cmd += ["--train-limit", "240", "--epochs", "1", "--stem", "imagenet", "--batch-size", "32"]
    return model, [cmd]


def bench_step(c: Check, limit: int):
    model, first = model_or_train(c)
    if c.dry:
        args = ["--backends", "torch,torch:bf16", "--batch-sizes", "1,8", "--min-time", "0.05", "--warmup", "0.02",
                "--latency-iters", "3", "--max-images", "64"]
    else:  # goals: torch-compiled bf16 >= 250k img/s at batch 1024, <= 0.3 ms at batch 1, agreement >= 99.5 %
        args = ["--backends", "torch:fp32,torch:bf16,torch-compiled:bf16", "--batch-sizes", "1,256,1024",
                "--min-time", "0.5", "--warmup", "0.3", "--latency-iters", "50"]
    return first + [[c.python, "-m", "fastcifar", "bench", model, "--data-dir", str(c.data), "--no-download",
                     "--device", "cpu" if c.dry else "auto", "--results-dir", str(c.work / "bench"), "--name",
                     "gpu-check", "--cache-dir", str(c.work / "cache"), "--jsonl", str(c.out / "bench.jsonl"),
                     "--json", *args]]


def export_step(c: Check, limit: int):
    model, first = model_or_train(c)
    extra = ["--verify-images", "64"] if c.dry else []
    return first + [[c.python, "-m", "fastcifar", "export", model, "--out", str(c.work / "exported"), "--data-dir",
                     str(c.data), "--precision", precision, "--json", *extra] for precision in ("fp32", "fp16")]


def throughput_step(c: Check, limit: int):
    args = (["--batch-sizes", "8", "--precisions", "fp32", "--steps", "2", "--warmup", "1", "--stem", "imagenet",
             "--no-compile", "--layouts", "channels_last"] if c.dry else
            ["--batch-sizes", "1024", "--precisions", "bf16", "--layouts", "channels_last,nchw"])
    return [[c.python, str(BENCH / "train_throughput.py"), "--device", "cpu" if c.dry else "auto", "--jsonl",
             str(c.out / "throughput.jsonl"), "--out", str(c.work / "throughput.json"), *args]]


def loaders_step(c: Check, limit: int):
    kinds = ["tensor"] + (["dali"] if importable(c, "nvidia.dali") else [])
    args = ["--epochs", "1", "--batch-size", "64"] if c.dry else ["--epochs", "3", "--batch-size", "512"]
    cmds = [[c.python, str(BENCH / "loaders.py"), "--data-dir", str(c.data), "--device", "cpu" if c.dry else "auto",
             "--out", str(c.work / "loaders.json"), "--jsonl", str(c.out / "loaders.jsonl"), "--loaders", *kinds,
             *args]]
    if "dali" in kinds:  # DALI decoding a JPEG folder (nvJPEG on a GPU) vs a torchvision DataLoader
        decode = (["--per-class", "10", "--size", "40", "--batch", "32", "--workers", "0", "--repeats", "1"] if c.dry
                  else ["--per-class", "500", "--size", "96", "--batch", "256", "--workers", "8"])
        cmds.append([c.python, str(BENCH / "folder_decode.py"), "--data-dir", str(c.data), "--device",
                     "cpu" if c.dry else "auto", "--json", str(c.work / "folder-decode.json"), *decode])
    return cmds


BUILDERS = {"setup": lambda c, limit: setup_step(c), "gpu-tests": gpu_tests_step, "sweep": sweep_step,
            "seed-preset": seed_preset_step, "bench": bench_step, "export": export_step,
            "throughput": throughput_step, "loaders": loaders_step}


# ---------------------------------------------------------------------------------------------- running

def importable(c: Check, module: str) -> bool:
    proc = subprocess.run([c.python, "-c", f"import {module}"], capture_output=True, env=c.env)
    return proc.returncode == 0


class Runner:
    """Runs the steps one by one, each in its own process group; SIGTERM/SIGINT stop the running one."""

    def __init__(self, c: Check, budget: float, steps: list[str]):
        self.c, self.budget, self.steps = c, budget, steps
        self.start = time.monotonic()
        self.proc = None
        self.current: tuple[dict, float] | None = None  # the running step's row and start
        self.records: list[dict] = []

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def limit_for(self, name: str) -> int:
        """This step's share of the time left, over the shares of the steps from here on."""
        shares = dict(STEPS)
        rest = self.steps[self.steps.index(name):]
        return int(self.left() * shares[name] / sum(shares[s] for s in rest))

    def record(self, **row) -> None:
        self.records.append(row)
        with open(self.c.work / "steps.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        shutil.copy(self.c.work / "steps.jsonl", self.c.out / "steps.jsonl")
        summarize(self.c)

    def run(self, name: str) -> None:
        shares = dict(STEPS)
        planned = int(self.budget * shares[name] / 100)
        limit = self.limit_for(name)
        row = {"step": name, "planned_s": planned, "limit_s": limit}
        if limit < MIN_STEP_S:
            self.record(**row, rc="skipped", seconds=0, note="the budget is spent")
            return
        built = BUILDERS[name](self.c, limit)
        if isinstance(built, str):
            print(f"== {name}: skipped ({built})", file=sys.stderr, flush=True)
            self.record(**row, rc="skipped", seconds=0, note=built)
            return
        print(f"== {name} (limit {limit} s)", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        self.current = (row, t0)
        rc, note = 0, ""
        with open(self.c.work / f"{name}.out", "ab") as out, open(self.c.work / f"{name}.log", "ab") as log:
            for cmd in built:
                remaining = limit - (time.monotonic() - t0)
                if remaining < 1:
                    rc, note = 124, f"cut by its {limit} s limit before its last command"
                    break
                log.write(f"$ {shlex.join(cmd)}\n".encode())
                log.flush()
                one = self.run_one(cmd, out, log, remaining)
                if one == 124:
                    rc, note = 124, f"cut by its {limit} s limit; what it wrote before stays"
                    break
                rc = rc or one
        if name == "setup":
            self.adopt_pythonpath()
        if name == "export":
            harvest_parity(self.c)
        used = round(time.monotonic() - t0)
        self.current = None
        self.record(**row, rc=rc, seconds=used, note=note)
        tail = (self.c.work / f"{name}.log").read_text(errors="replace").strip().splitlines()[-3:]
        print(f"   rc {rc} after {used} s" + "".join(f"\n   | {t}" for t in tail), file=sys.stderr, flush=True)

    def run_one(self, cmd: list[str], out, log, seconds: float) -> int:
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=log, env=self.c.env, cwd=REPO, start_new_session=True)
        try:
            return self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            self.stop_group()
            return 124
        finally:
            self.proc = None

    def stop_group(self) -> None:
        """SIGTERM the step's process group (it saves what it can), SIGKILL what is left after 5 s."""
        proc = self.proc
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # the group may outlive its leader (a pytest child, a DataLoader worker)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def on_signal(self, signum, frame) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop at a time
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.stop_group()
        raise KeyboardInterrupt

    def killed(self) -> None:
        """Record the step a signal stopped (its outputs stay as they were written)."""
        if self.current is not None:
            row, t0 = self.current
            self.current = None
            self.record(**row, rc="killed", seconds=round(time.monotonic() - t0), note="stopped by a signal")

    def adopt_pythonpath(self) -> None:
        extra = self.c.work / "pythonpath"
        if extra.is_file():
            self.c.env["PYTHONPATH"] = os.pathsep.join([self.c.env["PYTHONPATH"], extra.read_text().strip()])


def harvest_parity(c: Check) -> None:
    """export.jsonl: every parity record the export step wrote (beside each ONNX file as soon as it was checked)."""
    rows = []
    for path in sorted((c.work / "exported").glob("*.parity.json")):
        try:
            rows.append({"onnx": path.name[: -len(".parity.json")], **json.loads(path.read_text())})
        except (OSError, ValueError):
            continue
    if rows:
        (c.out / "export.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def summarize(c: Check) -> None:
    """summary.md from what OUT_DIR and the work dir hold now; atomic, so a kill never leaves half of it."""
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check_summary.py"), str(c.out), str(c.work)],
                          capture_output=True, text=True)
    if proc.returncode == 0:
        tmp = c.out / ".summary.md.tmp"
        tmp.write_text(proc.stdout)
        os.replace(tmp, c.out / "summary.md")
    else:
        (c.work / "summary.log").write_text(proc.stderr)


def pack(c: Check) -> None:
    """work.tar.gz: logs and records, never weights."""
    skip = (".pt", ".pth", ".safetensors", ".onnx", ".engine", ".plan", ".whl", ".npz")

    def keep(info: tarfile.TarInfo):
        parts = Path(info.name).parts
        if info.name.endswith(skip) or "cache" in parts or "site" in parts or "data" in parts:
            return None
        return info

    shutil.copy(c.out / "summary.md", c.work / "summary.md") if (c.out / "summary.md").is_file() else None
    tmp = c.out / ".work.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(c.work, arcname=".", filter=keep)
    os.replace(tmp, c.out / "work.tar.gz")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/gpu_check.sh", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="toy sizes on a CPU, no budget cuts")
    ap.add_argument("data_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--budget-s", type=float, default=os.environ.get("GPU_CHECK_BUDGET_S"))
    ap.add_argument("--steps", default=os.environ.get("GPU_CHECK_STEPS"), help="run only these steps (a,b)")
    ap.add_argument("--wheels", type=Path, default=Path(os.environ.get("GPU_CHECK_WHEELS", REPO / ".device-wheels")))
    ap.add_argument("--previous", nargs="*", default=None, help="earlier GPU runs' sweep.jsonl files")
    ap.add_argument("--tests", default=os.environ.get("GPU_CHECK_TESTS"), help="pytest arguments for gpu-tests")
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    data = Path(args.data_dir)
    if not data.is_dir():
        print(f"Error: DATA_DIR {data} is not a directory", file=sys.stderr)
        return 2
    if not (data / "cifar-10-batches-py").is_dir():
        print(f"Error: {data} has no cifar-10-batches-py/ (unpack the data there first)", file=sys.stderr)
        return 2
    out = Path(args.out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"Error: OUT_DIR {out} exists and is not an empty directory (nothing is overwritten)", file=sys.stderr)
        return 2
    names = [s for s, _ in STEPS]
    steps = names if not args.steps else [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in names]
    if unknown or not steps:
        print(f"Error: unknown steps {', '.join(unknown)} (choose from {', '.join(names)})", file=sys.stderr)
        return 2
    steps = [s for s in names if s in steps]  # always in the check's order
    python = os.environ.get("PYTHON", sys.executable)
    if subprocess.run([python, "-c", "import torch, numpy"], capture_output=True).returncode != 0:
        print(f"Error: {python} cannot import torch and numpy; point PYTHON at the interpreter that has them",
              file=sys.stderr)
        return 2
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"Error: cannot create OUT_DIR {out}: {exc.strerror}", file=sys.stderr)
        return 2
    if args.previous is None:
        previous = [Path(p) for p in sorted(glob.glob(str(BENCH / "results" / "gpu" / "*" / "sweep.jsonl")))]
        previous += [Path(p) for p in os.environ.get("GPU_CHECK_PREVIOUS", "").split(os.pathsep) if p]
    else:
        previous = [Path(p) for p in args.previous]
    budget = float(args.budget_s) if args.budget_s else (DRY_BUDGET_S if args.dry_run else GPU_BUDGET_S)
    work = Path(tempfile.mkdtemp(prefix="fastcifar-gpu-check."))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
           "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    c = Check(data=data.resolve(), out=out.resolve(), work=work, dry=args.dry_run, python=python, env=env,
              previous=previous, tests=shlex.split(args.tests) if args.tests else None, wheels=args.wheels.resolve())
    (c.out / "check.json").write_text(json.dumps({
        "budget_s": budget, "steps": steps, "dry_run": c.dry, "python": python,
        "previous": [str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p) for p in previous],
        "date": time.strftime("%Y-%m-%d %H:%M %Z")}) + "\n")
    with open(c.out / "env.json", "w") as f, open(work / "env.log", "w") as log:
        subprocess.run([python, "-c", "import json, sys; from fastcifar.runtime import env_info; "
                        "json.dump(env_info(['gpu_check']), sys.stdout, indent=1)"], stdout=f, stderr=log, env=env,
                       cwd=REPO)
    if shutil.which("nvidia-smi"):
        subprocess.run(["nvidia-smi"], stdout=open(work / "nvidia-smi.txt", "w"), stderr=subprocess.STDOUT)
    runner = Runner(c, budget, steps)
    signal.signal(signal.SIGTERM, runner.on_signal)
    signal.signal(signal.SIGINT, runner.on_signal)
    code = 0
    try:
        for name in steps:
            runner.run(name)
    except KeyboardInterrupt:
        runner.killed()
        print("== gpu_check: stopped by a signal; OUT_DIR keeps every result written so far", file=sys.stderr)
        code = 143
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        harvest_parity(c)
        for f in list(c.out.glob("*.json*")):  # a step that died before writing leaves an empty file
            if f.is_file() and f.stat().st_size == 0:
                f.unlink()
        summarize(c)
        pack(c)
        shutil.rmtree(work, ignore_errors=True)
    if code:
        return code
    print((c.out / "summary.md").read_text() if (c.out / "summary.md").is_file() else "(no summary)")
    return 0 if all(r["rc"] == 0 for r in runner.records) else 1


if __name__ == "__main__":
    sys.exit(main())
