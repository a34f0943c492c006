"""Serving wing: `predictor.py` (`Predictor`, `load_predictor`, the entry point scripts call), one runner per
backend (`torch_runner.py`, `ort_runner.py`, `trt_runner.py`), `artifacts.py` (the on-the-fly export cache),
`images.py` (image files -> pixels) and `demo.py` (the Gradio page)."""
