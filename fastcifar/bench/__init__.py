"""`fastcifar bench` wing: `harness.py` (BenchConfig, bench(): the plan, the gate, the records), `measure.py` (one
model's rows: artifacts, worker processes, parity), `worker.py` (what runs inside a worker), `tables.py` (table,
JSON, markdown, plot) and `load_test.py` (`fastcifar load-test` of a Triton server)."""
