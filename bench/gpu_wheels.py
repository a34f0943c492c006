"""Stage, on a CPU machine with PyPI, every wheel bench/gpu_check.sh needs on the borrowed GPU machine.

That machine has Python 3.12 with torch, torchvision, numpy and onnxruntime and no package index, so the rest
travels in one carried folder of at most 60 MiB, resolved together with the machine's own packages (no clashes;
what it has is left out).

    make gpu-wheels                                   # = python bench/gpu_wheels.py
    python bench/gpu_wheels.py --out .device-wheels --dali

Writes OUT/*.whl, OUT/requirements.txt (for `pip install --no-index --find-links OUT`) and OUT/manifest.json, then
prints the size. With --dali, DALI's wheel (~190 MiB) goes to OUT-dali/ as parts of at most 60 MiB, one per carried
call. Exit 1 when OUT passes --max-mib.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What the GPU machine had (the first GPU run's record; docs/development.md, "Maintainers: the borrowed GPU check"):
# these are resolved with the staged packages so that nothing staged needs another version of them, and are not
# staged themselves.
MACHINE = ("torch==2.11.0", "torchvision==0.26.0", "numpy", "onnxruntime==1.30.0")
# What the check imports besides the machine's packages: the CLI, its progress display, weights, export, the bench
# report, and the GPU tests with a per-test timeout and a per-test record (pytest-reportlog's JSON lines).
NEEDED = ("click>=8.1", "rich>=13", "safetensors>=0.4", "onnx>=1.16", "onnxscript", "matplotlib>=3.7",
          "pytest>=8", "pytest-timeout", "pytest-reportlog")
DALI = "nvidia-dali-cuda130==2.4.0"
PYTHON_VERSION = "3.12"
# manylinux tags from glibc 2.17 to 2.39 (the GPU machine ran Ubuntu's Python 3.12.3, glibc 2.39).
PLATFORMS = ("manylinux2014_x86_64", *(f"manylinux_2_{minor}_x86_64" for minor in range(17, 40)), "linux_x86_64")
PART_BYTES = 60 * 2**20


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def target_flags(python_version: str) -> list[str]:
    flags = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp"]
    for platform in PLATFORMS:
        flags += ["--platform", platform]
    return flags


def resolve(requirements: list[str], python_version: str) -> dict[str, str]:
    """{canonical name: version} of everything pip would install for `requirements` on the target Python."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--report", str(report), "--target", str(Path(tmp) / "unused"), *target_flags(python_version),
               *requirements]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"Error: pip could not resolve {' '.join(requirements)} for Python {python_version}:\n"
                             + proc.stderr[-2000:])
        items = json.loads(report.read_text())["install"]
    return {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in items}


def download(pins: list[str], dest: Path, python_version: str) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest),
           *target_flags(python_version), *pins]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"Error: pip download failed:\n{proc.stderr[-2000:]}")


def split_wheel(wheel: Path, dest: Path) -> list[Path]:
    """WHEEL -> WHEEL.part-aa, -ab, ... of at most PART_BYTES each (gpu_check.sh joins them in order)."""
    parts = []
    with wheel.open("rb") as src:
        index = 0
        while chunk := src.read(PART_BYTES):
            suffix = "abcdefghijklmnopqrstuvwxyz"[index // 26] + "abcdefghijklmnopqrstuvwxyz"[index % 26]
            part = dest / f"{wheel.name}.part-{suffix}"
            part.write_bytes(chunk)
            parts.append(part)
            index += 1
    return parts


def mib(paths) -> float:
    return sum(p.stat().st_size for p in paths) / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / ".device-wheels", help="folder to fill [.device-wheels]")
    ap.add_argument("--python-version", default=PYTHON_VERSION, help=f"the GPU machine's Python [{PYTHON_VERSION}]")
    ap.add_argument("--max-mib", type=float, default=60.0, help="largest folder that may be carried [60]")
    ap.add_argument("--dali", action="store_true", help=f"also stage {DALI} in OUT-dali/ as 60 MiB parts")
    args = ap.parse_args(argv)

    base = resolve(list(MACHINE), args.python_version)
    wanted = list(NEEDED) + ([DALI] if args.dali else [])
    together = resolve(list(MACHINE) + wanted, args.python_version)
    staged = {name: version for name, version in together.items() if name not in base}
    dali_name = canonical(DALI.split("==")[0])
    dali_dir = args.out.with_name(args.out.name + "-dali")
    with tempfile.TemporaryDirectory() as tmp:
        download([f"{name}=={version}" for name, version in sorted(staged.items())], Path(tmp), args.python_version)
        for folder in (args.out, dali_dir):  # fresh folders: an earlier staging's wheels must not be installed
            if folder.exists():
                shutil.rmtree(folder)
        args.out.mkdir(parents=True)
        for wheel in Path(tmp).glob("*.whl"):
            if canonical(wheel.name.split("-")[0]) == dali_name:
                dali_dir.mkdir(exist_ok=True)
                split_wheel(wheel, dali_dir)
            else:
                shutil.move(str(wheel), args.out / wheel.name)
    wheels = sorted(args.out.glob("*.whl"))
    size = mib(wheels)
    tops = [canonical(re.split(r"[<>=!~ ]", r, maxsplit=1)[0]) for r in NEEDED]
    (args.out / "requirements.txt").write_text("".join(f"{name}\n" for name in tops))
    manifest = {"python_version": args.python_version, "platforms": list(PLATFORMS), "machine_has": list(MACHINE),
                "needed": list(NEEDED), "staged": staged, "left_out_machine_has": base,
                "wheels": [w.name for w in wheels], "mib": round(size, 1),
                "dali_parts": sorted(p.name for p in dali_dir.glob("*.part-*"))}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"staged {len(wheels)} wheels for CPython {args.python_version} in {args.out}: {size:.1f} MiB "
          f"(limit {args.max_mib:g} MiB); left out what the GPU machine has: {', '.join(sorted(base)[:6])}, ...")
    if manifest["dali_parts"]:
        print(f"DALI in {dali_dir}: {len(manifest['dali_parts'])} parts of <= 60 MiB "
              f"({mib(dali_dir.glob('*.part-*')):.0f} MiB), one carried call each")
    if size > args.max_mib:
        print(f"Error: {size:.1f} MiB is over --max-mib {args.max_mib:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
