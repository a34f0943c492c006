"""The PyTorch backends `torch` and `torch-compiled`: the run's model.safetensors behind the training loader's exact
preprocessing (preprocess.make_pixel_pipeline), and the fp32 switch that makes the parity reference really fp32.

`torch-compiled` serves through `BucketedPipeline` (ragged batches padded to `BATCH_BUCKETS`, outputs cloned out
of the compiled/CUDA-graph memory) and, on CUDA with CUDA graphs, through `OwnerThread` (every call on one thread).
"""

from __future__ import annotations

import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastcifar.precision import torch_dtype
from fastcifar.preprocess import NATIVE_SIZE, make_pixel_pipeline
from fastcifar.serve.base import Predictor


def compile_mode(device_type: str) -> str | None:
    """torch.compile mode for serving: CUDA graphs on CUDA ('reduce-overhead': one graph per batch size replays
    the whole forward with one launch, which is what latency-bound small batches need); torch's default on the
    CPU. Not yet measured on a GPU (bench/gpu_check.sh measures it against the 0.3 ms batch-1 goal)."""
    return "reduce-overhead" if device_type == "cuda" else None


# Batch sizes the compiled predictor runs at: padding every batch up to one bounds the compiles (one per size) below
# dynamo's recompile limit, past which torch silently falls back to eager, for up to 4x the rows of a ragged batch.
# 1, 64, 256 and 1024 (bench's sizes; 256 is Predictor.max_batch) run unpadded. docs/inference.md, "Precision".
BATCH_BUCKETS = (1, 8, 32, 64, 128, 256, 1024)


def bucket_size(n: int, buckets: tuple[int, ...] = BATCH_BUCKETS) -> int:
    """The smallest bucket holding `n` rows (n = 0 runs at the smallest bucket); n above the largest is an error."""
    for size in buckets:
        if n <= size:
            return size
    raise ValueError(f"batch of {n} is larger than the largest bucket {buckets[-1]}; split it (bucket_chunks)")


def bucket_chunks(n: int, buckets: tuple[int, ...] = BATCH_BUCKETS) -> list[tuple[int, int, int]]:
    """(start, stop, padded size) per call that serves `n` rows: full chunks of the largest bucket, then the
    remainder padded to its bucket. n=5 -> [(0, 5, 8)]; n=2500 -> 1024 + 1024 + (452 padded to 1024)."""
    largest = buckets[-1]
    chunks = [(start, min(start + largest, n), largest) for start in range(0, n - n % largest, largest)]
    if n % largest or n == 0:
        start = n - n % largest
        chunks.append((start, n, bucket_size(n - start, buckets)))
    return chunks


class BucketedPipeline:
    """Calls `fn` (a compiled pipeline: uint8 NHWC in, logits out) only at `buckets` batch sizes.

    A batch is zero-padded up to its bucket (larger ones split into chunks of the largest bucket), and the first n
    output rows are cloned out. Padding cannot change the real rows: every layer runs in eval mode, so each output
    row depends on its own input row only, and a batch that already is a bucket size goes through unchanged. The
    clone is needed with CUDA graphs ('reduce-overhead'): outputs live in the graph's static memory, and the next
    replay at that size - the next call, or the next chunk of this one - overwrites them. On the CPU it costs one
    (n, num_classes) copy.
    """

    def __init__(self, fn, buckets: tuple[int, ...] = BATCH_BUCKETS):
        if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < 1:
            raise ValueError(f"buckets must be increasing positive sizes, got {buckets}")
        self.fn = fn
        self.buckets = tuple(buckets)

    def __call__(self, inputs):
        import torch

        outputs = []
        for start, stop, size in bucket_chunks(int(inputs.shape[0]), self.buckets):
            chunk, pad = inputs[start:stop], size - (stop - start)
            if pad or chunk.is_inference():
                # Always hand `fn` a normal (not inference-mode) tensor, as `to_input` makes: dynamo guards on the
                # dispatch keys too, so a padded copy made under inference_mode next to an unpadded input would
                # compile every bucket twice (seen on torch 2.14). Exact-size normal inputs are not copied.
                with torch.inference_mode(False):
                    chunk = torch.cat([chunk, chunk.new_zeros((pad, *chunk.shape[1:]))]) if pad else chunk.clone()
            # Clone each chunk's rows before the next call: it may replay the same graph into the same memory.
            outputs.append(self.fn(chunk)[:stop - start].clone())
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


class OwnerThread:
    """Runs every `call` on one dedicated thread, one call at a time, and hands back its result or exception.

    Why: CUDA graphs captured by torch.compile(mode='reduce-overhead') live in thread-local state, and replaying
    them from a thread other than the one that captured them fails (pytorch issue #123177) - while servers such as
    fastcifar's Gradio demo load a predictor on the main thread and call it from worker threads. Routing compile,
    capture and every replay through one thread avoids that, and serialises concurrent callers (one GPU stream of
    work anyway). The torch fix for that issue (PR #184357) keeps graph state per calling thread instead, i.e. one
    capture and one memory pool per thread, which one owner thread still avoids. A call made from the owner thread
    itself runs inline, so re-entry cannot deadlock.

    The worker belongs to a single-worker ThreadPoolExecutor: it sleeps when idle, exits on `close()` or when this
    object is garbage collected, and at interpreter exit after the call in progress (no daemon thread killed
    mid-CUDA-call).
    """

    def __init__(self, name: str = "fastcifar-owner", initializer=None):
        ident: list[int] = []  # the worker's thread id, filled on the worker; a list, so the worker holds no `self`

        def start():
            ident.append(threading.get_ident())
            if initializer is not None:
                initializer()

        self._ident = ident
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=start)
        self._close = weakref.finalize(self, self._executor.shutdown, wait=False)

    @property
    def thread_id(self) -> int | None:
        """The owner thread's id (None until the first call starts it)."""
        return self._ident[0] if self._ident else None

    def call(self, fn, /, *args, **kwargs):
        """fn(*args, **kwargs) on the owner thread; blocks until it returns, re-raising its exception here."""
        if threading.get_ident() == self.thread_id:
            return fn(*args, **kwargs)
        return self._executor.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        """Stop the worker once the queued calls finish; later calls raise RuntimeError."""
        self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class TorchPredictor(Predictor):
    """The eager (`torch`) or compiled (`torch-compiled`) pipeline on `device`.

    Compiled, it is proposed for serving as follows, not yet measured on a GPU (bench/gpu_check.sh measures it):
    batches are padded to `BATCH_BUCKETS` sizes (at most that many compiles, whatever sizes arrive; on every
    device), outputs are cloned out of the compiled memory, and on CUDA, where `compile_mode` gives CUDA graphs,
    every call runs on one `OwnerThread` - a thread hand-off per call, whose cost the batch-1 latency there includes.
    """

    backend = "torch"

    def __init__(self, path: Path, device, *, compile_model: bool = False, precision: str = "fp32"):
        import torch

        from fastcifar.models import load_model

        self.torch_device = device
        self.device = str(device)
        self.precision = precision
        model, spec, meta = load_model(path, device=device)
        super().__init__({**meta, **spec.to_dict(), "input_size": NATIVE_SIZE}, path)
        # The model is cast (not autocast): no per-op casting decisions at inference, and the weights live in the
        # smaller type. fp32 is the parity reference.
        dtype = None if precision == "fp32" else torch_dtype(precision)
        model = model.to(dtype=dtype, memory_format=torch.channels_last)  # channels_last: faster convs, H100 + CPU
        self.pipeline = make_pixel_pipeline(model, spec.mean, spec.std, spec.image_size, dtype).to(device)
        self._forward = self.pipeline  # what `run` calls: the eager pipeline, or the bucketed compiled one
        self._owner: OwnerThread | None = None
        if compile_model:
            self.backend = "torch-compiled"
            mode = compile_mode(device.type)
            # Static shapes: each bucket size compiles once; bench keeps those compiles out of its timing.
            self.pipeline = torch.compile(self.pipeline, dynamic=False, mode=mode)
            self._forward = BucketedPipeline(self.pipeline)
            if device.type == "cuda" and mode == "reduce-overhead":
                # A new thread's current CUDA device is cuda:0: pin the owner to ours before it compiles.
                self._owner = OwnerThread("fastcifar-cudagraphs", initializer=lambda: torch.cuda.set_device(device))
        self.timing = "events" if device.type == "cuda" else "wall"

    def to_input(self, pixels):
        import torch

        return torch.from_numpy(pixels).to(self.torch_device, non_blocking=False)

    def run(self, inputs):
        if self._owner is not None:
            return self._owner.call(self._run_here, inputs)
        return self._run_here(inputs)

    def _run_here(self, inputs):
        import torch

        # inference_mode is thread-local: entered here, on whichever thread runs the pipeline.
        with torch.inference_mode():
            return self._forward(inputs)

    def to_numpy(self, outputs):
        return outputs.float().cpu().numpy()

    def synchronize(self):
        import torch

        if self.torch_device.type == "cuda":
            torch.cuda.synchronize(self.torch_device)


def configure_fp32_reference() -> None:
    """Make fp32 mean fp32 on CUDA: cuDNN convolutions default to TF32 (10-bit mantissa) on Ampere+."""
    import torch

    if hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision"):
        # torch >= 2.9: the new API only - mixing it with allow_tf32 makes torch raise when either is read.
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
