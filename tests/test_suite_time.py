"""bench/suite_time.py: the suite's wall and CPU time in one process and on pytest-xdist workers, from a real run
of a small module both ways; its counts come from pytest's JUnit XML."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "suite_time.py"


def run_script(*args: str) -> subprocess.CompletedProcess:
    # Not this worker's xdist variables: the script's pytest is a session of its own.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_one_module_both_ways_gives_the_same_counts_and_a_table(tmp_path):
    out = tmp_path / "new" / "suite.json"  # the folder does not exist yet
    proc = run_script("--workers", "0,2", "--json", str(out), "--", "tests/test_architecture.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    record = json.loads(out.read_text())
    serial, xdist = record["rows"]
    assert (serial["workers"], xdist["workers"]) == (0, 2)
    for row in (serial, xdist):
        assert row["exit"] == 0 and row["failed"] == 0 and row["skipped"] == 0
        assert row["passed"] == serial["passed"] > 0 and row["wall_s"] > 0 and row["cpu_s"] > 0
        assert list(row["slowest_modules_s"]) == ["test_architecture"]
    assert record["pytest_xdist"] and record["cores"] == os.cpu_count()
    assert "| 0 |" in proc.stdout and "| 2 |" in proc.stdout and "1.00x" in proc.stdout
    assert not list(out.parent.glob("*.tmp"))


def test_bad_workers_are_one_usage_error():
    proc = run_script("--workers", "two")
    assert proc.returncode == 2 and "--workers takes comma-separated integers" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_junit_counts_tell_passed_failed_and_skipped_apart(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from suite_time import junit_counts
    finally:
        sys.path.remove(str(SCRIPT.parent))
    xml = tmp_path / "junit.xml"
    xml.write_text('<testsuites><testsuite>'
                   '<testcase classname="tests.test_a" name="ok" time="1.5"/>'
                   '<testcase classname="tests.test_a" name="bad" time="2"><failure message="x"/></testcase>'
                   '<testcase classname="tests.test_b" name="err" time="0.5"><error message="y"/></testcase>'
                   '<testcase classname="tests.test_b" name="gpu" time="0"><skipped message="no GPU"/></testcase>'
                   '</testsuite></testsuites>')
    counts, modules = junit_counts(xml)
    assert counts == {"passed": 1, "failed": 2, "skipped": 1}
    assert modules == {"test_a": 3.5, "test_b": 0.5}


def test_the_longest_first_order_names_modules_that_exist():
    """conftest.LONGEST_FIRST orders `make test`'s modules; a renamed module would silently fall to the back."""
    from conftest import LONGEST_FIRST

    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)
    assert all((REPO / "tests" / name).is_file() for name in LONGEST_FIRST), LONGEST_FIRST
