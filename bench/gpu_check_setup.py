"""bench/gpu_check.sh's setup step: install the staged wheels into the interpreter that runs the check, then say
which of the modules the check uses import and which are still missing. Standard library only.

    python bench/gpu_check_setup.py --wheels .device-wheels --dali-wheels .device-wheels-dali --out setup.json

Installs nothing when every module already imports; otherwise tries pip, pip --break-system-packages, pip --user,
one requirement at a time, and without pip unpacks each wheel into WORK/site for PYTHONPATH (--pythonpath-file).
DALI's wheel parts are joined and installed the same way. Writes --out (JSON) and prints one line per module.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

# module -> what the check needs it for (the summary names the steps a missing module costs)
MODULES = {
    "click": "the fastcifar CLI (bench and export steps)",
    "rich": "the training progress display (sweep, seed preset)",
    "safetensors": "saving trained models (sweep, seed preset, bench, export)",
    "onnx": "ONNX export (export step, gpu tests)",
    "onnxscript": "ONNX export with dynamo (export step, gpu tests)",
    "onnxruntime": "ONNX parity (export step)",
    "matplotlib": "the bench report's plot (bench step)",
    "pytest": "the gpu-tests step",
    "pytest_timeout": "per-test time limits in the gpu-tests step",
    "pytest_reportlog": "a record of each gpu test as it ends",
}
OPTIONAL = {"nvidia.dali": "DALI's GPU pipeline (loaders step, gpu tests)"}


def missing_modules(names, env=None) -> dict[str, str]:
    """{module: the import error} for each of `names` that does not import, each tried in a fresh interpreter."""
    code = ("import importlib, json, sys\nout = {}\nfor name in sys.argv[1:]:\n    try:\n"
            "        importlib.import_module(name)\n    except Exception as exc:\n"
            "        out[name] = f'{type(exc).__name__}: {exc}'[:300]\nprint(json.dumps(out))")
    proc = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, env=env)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {name: f"could not check: {proc.stderr.strip()[-200:]}" for name in names}


def join_parts(folder: Path, into: Path) -> list[Path]:
    """WHEEL.part-aa, -ab, ... -> WHEEL (in `into`)."""
    wheels = []
    for first in sorted(folder.glob("*.whl.part-aa")):
        wheel = into / first.name[: -len(".part-aa")]
        with wheel.open("wb") as out:
            for part in sorted(folder.glob(glob_escape(wheel.name) + ".part-*")):
                out.write(part.read_bytes())
        wheels.append(wheel)
    return wheels


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def pip_install(args: list[str], log) -> tuple[bool, str]:
    """pip install with the fallbacks a borrowed machine may need; (ok, how)."""
    base = [sys.executable, "-m", "pip", "install", "--no-index", "--disable-pip-version-check", "-q"]
    last = ""
    for extra, how in (([], "pip"), (["--break-system-packages"], "pip --break-system-packages"),
                       (["--user", "--break-system-packages"], "pip --user")):
        proc = subprocess.run(base + extra + args, capture_output=True, text=True)
        if proc.returncode == 0:
            return True, how
        last = (proc.stderr or proc.stdout).strip()
        log(f"  {how} failed: {last.splitlines()[-1] if last else proc.returncode}")
        if "No module named pip" in last:
            break
    return False, last[-500:]


def unpack(wheels: list[Path], site: Path) -> list[str]:
    """Without pip: a wheel is a zip of its files as they sit in site-packages."""
    site.mkdir(parents=True, exist_ok=True)
    done = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(site)
        done.append(wheel.name)
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheels", type=Path, required=True, help="the folder bench/gpu_wheels.py filled")
    ap.add_argument("--dali-wheels", type=Path, default=None, help="DALI's parts (WHEEL.part-aa, ...), if carried")
    ap.add_argument("--work", type=Path, required=True, help="a scratch folder (joined wheels, the unpack fallback)")
    ap.add_argument("--out", type=Path, required=True, help="setup record (JSON)")
    ap.add_argument("--pythonpath-file", type=Path, required=True,
                    help="written with a folder to add to PYTHONPATH when wheels had to be unpacked")
    args = ap.parse_args(argv)

    def log(message: str) -> None:
        print(message, flush=True)

    record = {"python": sys.executable, "version": sys.version.split()[0], "wheels": str(args.wheels),
              "installed_with": None, "failed": [], "missing_before": {}, "missing": {}}
    names = list(MODULES) + list(OPTIONAL)
    record["missing_before"] = missing_modules(names)
    reqs = args.wheels / "requirements.txt"
    wheels = sorted(args.wheels.glob("*.whl")) if args.wheels.is_dir() else []
    dali = join_parts(args.dali_wheels, args.work) if args.dali_wheels and args.dali_wheels.is_dir() else []
    need = [n for n in record["missing_before"] if n in MODULES or (n in OPTIONAL and dali)]
    if not need:
        log("every module the check uses imports: nothing to install")
    elif not wheels and not dali:
        log(f"missing {', '.join(need)}, and no wheels are staged in {args.wheels} (make gpu-wheels on a machine "
            "with PyPI, then carry the folder)")
    else:
        find = ["--find-links", str(args.wheels), "--find-links", str(args.work)]
        requirements = [line.strip() for line in reqs.read_text().splitlines() if line.strip()] if reqs.is_file() \
            else []
        targets = requirements + [str(w) for w in dali]
        ok, how = pip_install(find + targets, log)
        if ok:
            record["installed_with"] = how
        elif "No module named pip" in how:
            site = args.work / "site"
            record["installed_with"] = f"unpacked into {site} (no pip)"
            record["unpacked"] = unpack(wheels + dali, site)
            args.pythonpath_file.write_text(str(site))
        else:  # one at a time: whatever can install does
            record["installed_with"] = "pip, one requirement at a time"
            for target in targets:
                ok, why = pip_install(find + [target], log)
                if not ok:
                    record["failed"].append({"requirement": target, "error": why})
    env = dict(os.environ)
    if args.pythonpath_file.is_file():
        env["PYTHONPATH"] = os.pathsep.join(p for p in (args.pythonpath_file.read_text().strip(),
                                                        env.get("PYTHONPATH")) if p)
    record["missing"] = missing_modules(names, env=env)
    for name in names:
        why = MODULES.get(name) or OPTIONAL[name]
        state = "ok" if name not in record["missing"] else f"MISSING ({record['missing'][name]})"
        log(f"{name:18s} {state}: {why}")
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    required_missing = [n for n in record["missing"] if n in MODULES]
    return 1 if required_missing else 0


if __name__ == "__main__":
    sys.exit(main())
