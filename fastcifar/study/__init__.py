"""Study wing: `compare.py` (pretrained vs random init over settings, seeds and fractions; its entry point
`fastcifar.study.compare.compare`), `report.py` (results.json, report.md, plots) and `stats.py` (Welch intervals)."""
