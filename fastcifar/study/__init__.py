"""Study wing: `fastcifar.study.compare.compare` runs the experiment (run_plan.py plans its runs, sizing.py fits it to
a time budget, study_progress.py shows it, pretrained.py finds the pretrained weights, one_run.py trains and evaluates
each run, in this process or as a Ray task from ray_runs.py); results.py, markdown.py, plots.py, stats.py and report.py
turn the finished runs into the report."""
