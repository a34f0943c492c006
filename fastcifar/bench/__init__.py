"""`fastcifar bench` wing: `harness.py` (BenchConfig, bench(): the plan, the gate, the records), `measure.py` (one
model's rows: artifacts, worker processes, parity), `worker.py` (what runs inside a worker), `tables.py` (table,
JSON, markdown, plot) and `load_test.py` (`fastcifar load-test` of a Triton server)."""

from pathlib import Path

# Where `fastcifar bench` writes its reports, under the working directory: beside compare's reports/<study>, a folder
# git ignores. Not bench/results/, which is the project's committed measurement record (bench/README.md): a bench
# run inside the checkout must not add files to it unasked.
DEFAULT_RESULTS_DIR = Path("reports") / "bench"
