"""Serving wing: `predictor.py` (`Predictor`, `load_predictor`, the entry point scripts call), one runner per
backend (`torch_runner.py`, `ort_runner.py`, `trt_runner.py`), `artifacts.py` (the on-the-fly export cache),
`demo.py` (the Gradio page), `triton_server.py` / `triton_client.py` (fastcifar serve on Triton and its client).
Image files -> pixels is fastcifar/data/images.py (training on image folders reads them the same way)."""
