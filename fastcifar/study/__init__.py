"""Study wing: `compare.py` (pretrained vs random init over settings, seeds and fractions; its entry point
`fastcifar.study.compare.compare`), `pretrained.py` (where the pretrained weights come from), `results.py` (the
numbers and the conclusion), `markdown.py` (report.md), `plots.py` (the figures), `report.py` (writes them) and
`stats.py` (Welch intervals)."""
