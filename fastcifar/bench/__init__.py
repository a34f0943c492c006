"""`fastcifar bench` wing: `harness.py` (plan, parity reference, one worker process per backend), `worker.py` (what
runs inside that process) and `report.py` (table, JSON, markdown, plot)."""
