"""Compiled serving (torch_runner): ragged batches padded to BATCH_BUCKETS so compiles stay bounded, outputs cloned
out of (CUDA-graph) static memory, and every call of a CUDA-graph pipeline on one OwnerThread."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from torch._dynamo.testing import CompileCounter

from fastcifar.serve.torch_runner import (BATCH_BUCKETS, BucketedPipeline, OwnerThread, TorchPredictor, bucket_chunks,
                                          bucket_size)


def _recompile_limit() -> int:
    config = torch._dynamo.config
    return getattr(config, "recompile_limit", None) or config.cache_size_limit  # renamed in torch 2.6


@pytest.fixture
def fresh_dynamo():
    # Dynamo's compile cache (and its recompile limit) belongs to a function's code object, shared by every
    # instance compiled in this process: start from an empty cache so a test's compile counts are its own.
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))


class PerRow(torch.nn.Module):
    """uint8 NHWC -> (N, 10), each output row from its own input row only (like any model in eval mode)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2)
        self.fc = torch.nn.Linear(4 * 15 * 15, 10)

    def forward(self, pixels):
        x = torch.relu(self.conv(pixels.float().permute(0, 3, 1, 2) / 255.0))
        return self.fc(x.flatten(1))


class StaticOutputs:
    """Stands in for a CUDA-graph replay: one output buffer per batch size, overwritten by every call at that size."""

    def __init__(self):
        self.buffers: dict[int, torch.Tensor] = {}
        self.inputs: list[torch.Tensor] = []

    def __call__(self, x):
        self.inputs.append(x)
        out = self.buffers.setdefault(x.shape[0], torch.empty(x.shape[0], 3))
        return out.copy_(x.flatten(1)[:, :3].float())


# ---------------------------------------------------------------------------------------------- bucket choice


def test_bucket_sizes_stay_under_the_recompile_limit_and_hold_the_bench_sizes():
    assert list(BATCH_BUCKETS) == sorted(set(BATCH_BUCKETS))
    assert len(BATCH_BUCKETS) <= 7 and len(BATCH_BUCKETS) < _recompile_limit()
    assert {1, 64, 256, 1024} <= set(BATCH_BUCKETS)  # bench's default sizes and Predictor.max_batch run unpadded


@pytest.mark.parametrize("n, chunks", [
    (0, [(0, 0, 1)]),  # an empty batch still runs (at the smallest bucket) and returns (0, classes)
    (1, [(0, 1, 1)]),
    (5, [(0, 5, 8)]),
    (8, [(0, 8, 8)]),
    (9, [(0, 9, 32)]),
    (300, [(0, 300, 1024)]),
    (1024, [(0, 1024, 1024)]),
    (1025, [(0, 1024, 1024), (1024, 1025, 1)]),
    (2500, [(0, 1024, 1024), (1024, 2048, 1024), (2048, 2500, 1024)]),
])
def test_bucket_chunks(n, chunks):
    assert bucket_chunks(n) == chunks
    assert all(size in BATCH_BUCKETS and stop - start <= size for start, stop, size in chunks)


def test_bucket_size_and_custom_buckets():
    assert [bucket_size(n) for n in (1, 2, 8, 9, 33, 65, 129, 257)] == [1, 8, 8, 32, 64, 128, 256, 1024]
    with pytest.raises(ValueError, match="larger than the largest bucket 1024"):
        bucket_size(1025)
    assert bucket_chunks(10, (1, 4)) == [(0, 4, 4), (4, 8, 4), (8, 10, 4)]
    for bad in ((), (8, 1), (0, 4), (4, 4)):
        with pytest.raises(ValueError, match="increasing positive"):
            BucketedPipeline(lambda x: x, bad)


# ---------------------------------------------------------------------------------------------- BucketedPipeline


def test_ragged_sizes_compile_once_per_bucket_and_match_eager(fresh_dynamo):
    module = PerRow().eval()
    counter = CompileCounter()  # real dynamo tracing and guards, no inductor codegen: fast on a CPU
    bucketed = BucketedPipeline(torch.compile(module, backend=counter, dynamic=False))
    pixels = _pixels(40)
    with torch.inference_mode():
        for n in range(1, 41):
            out = bucketed(pixels[:n])
            assert out.shape == (n, 10)
            torch.testing.assert_close(out, module(pixels[:n]), atol=1e-4, rtol=0)
        assert counter.frame_count == len({bucket_size(n) for n in range(1, 41)}) == 4  # 1, 8, 32, 64
        bucketed(pixels[:8].clone())  # an inference-mode tensor at a bucket size: the same graph, no new compile
        bucketed(pixels[:3].clone())
    assert counter.frame_count == 4


def test_without_buckets_ragged_sizes_exhaust_the_recompile_limit(fresh_dynamo):
    """What the buckets prevent: one compile per new size until dynamo gives up and runs eagerly."""
    counter = CompileCounter()
    compiled = torch.compile(PerRow().eval(), backend=counter, dynamic=False)
    with torch.inference_mode():
        for n in range(1, 13):
            compiled(_pixels(n))
    assert counter.frame_count == _recompile_limit() > len(BATCH_BUCKETS)


def test_a_bucket_size_goes_through_untouched_and_chunks_reassemble_in_order():
    inner = StaticOutputs()
    bucketed = BucketedPipeline(inner, buckets=(1, 4))
    x = _pixels(10)
    out = bucketed(x[:4])
    assert inner.inputs[-1].data_ptr() == x.data_ptr() and inner.inputs[-1].shape[0] == 4  # no pad, no copy
    torch.testing.assert_close(out, x[:4].flatten(1)[:, :3].float(), atol=0, rtol=0)
    out = bucketed(x)  # 10 rows: chunks of 4, 4, and 2 padded to 4 - all three replays write the same buffer
    assert [t.shape[0] for t in inner.inputs[-3:]] == [4, 4, 4]
    assert (inner.inputs[-1][2:] == 0).all()  # zero padding
    torch.testing.assert_close(out, x.flatten(1)[:, :3].float(), atol=0, rtol=0)


def test_outputs_are_not_aliased_to_the_replayed_memory():
    inner = StaticOutputs()
    bucketed = BucketedPipeline(inner, buckets=(1, 4))
    a_in, b_in = _pixels(3, seed=1), _pixels(3, seed=2)
    first = bucketed(a_in)
    held = first.clone()
    second = bucketed(b_in)  # overwrites the size-4 buffer that `first` was sliced from
    torch.testing.assert_close(first, held, atol=0, rtol=0)
    assert first.data_ptr() not in {buf.data_ptr() for buf in inner.buffers.values()}
    first.zero_()  # a caller writing into its result changes nothing the next call returns
    torch.testing.assert_close(bucketed(b_in), second, atol=0, rtol=0)
    assert not torch.equal(second, torch.zeros_like(second))


# ---------------------------------------------------------------------------------------------- TorchPredictor


@pytest.fixture(scope="module")
def counted_predictors(tiny_model_dir):
    """A `torch-compiled` predictor compiled through dynamo with a counting backend (no inductor: seconds, not
    minutes, on a CPU), and the eager one."""
    torch._dynamo.reset()  # PixelPipeline.forward may hold other tests' compiles: count ours only
    counter = CompileCounter()
    real_compile = torch.compile
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend=counter,
                                                                         dynamic=kw["dynamic"]))
        compiled = TorchPredictor(tiny_model_dir, torch.device("cpu"), compile_model=True)
    return compiled, TorchPredictor(tiny_model_dir, torch.device("cpu")), counter


def test_compiled_predictor_pads_ragged_batches_and_matches_eager(counted_predictors):
    compiled, eager, counter = counted_predictors
    pixels = _pixels(8, seed=3).numpy()
    assert compiled.backend == "torch-compiled" and compiled._owner is None  # no CUDA graphs on the CPU
    reference = eager.logits(pixels)  # eval mode: a row's logits do not depend on the rest of its batch
    held = compiled.logits(pixels[:5])
    for n in (3, 8):
        np.testing.assert_allclose(compiled.logits(pixels[:n]), reference[:n], atol=1e-4)
    assert counter.frame_count == 1  # 3 and 5 padded to bucket 8, 8 itself unpadded: one compile
    np.testing.assert_allclose(held, reference[:5], atol=1e-4)  # not overwritten by later calls


def test_predictor_calls_from_many_threads_run_on_its_owner_thread(counted_predictors):
    """The CUDA-graph arrangement, on the CPU: an OwnerThread in front of the compiled pipeline."""
    compiled, eager, counter = counted_predictors
    seen: list[int] = []
    forward = compiled._forward
    compiled._forward = lambda x: (seen.append(threading.get_ident()), forward(x))[1]
    compiled._owner = OwnerThread()
    try:
        pixels = _pixels(8, seed=4).numpy()
        reference = eager.logits(pixels)
        batches = {n: pixels[8 - n:] for n in (2, 5, 7, 8)}  # all bucket 8: compiled in the test above
        results: dict[int, np.ndarray] = {}
        threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, compiled.logits(batches[n])))
                   for n in batches]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert set(seen) == {compiled._owner.thread_id} and compiled._owner.thread_id != threading.get_ident()
        for n in batches:  # each caller got the logits of its own images
            np.testing.assert_allclose(results[n], reference[8 - n:], atol=1e-4)
    finally:
        compiled._owner.close()
        compiled._owner, compiled._forward = None, forward


# ---------------------------------------------------------------------------------------------- OwnerThread


def test_owner_thread_runs_every_call_on_one_thread_one_at_a_time():
    active, most = [0], [0]
    lock = threading.Lock()

    def work(i):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.002)
        with lock:
            active[0] -= 1
        return i * i, threading.get_ident()

    with OwnerThread() as owner:
        results: dict[int, tuple] = {}
        callers = [threading.Thread(target=lambda i=i: results.__setitem__(i, owner.call(work, i))) for i in range(16)]
        for t in callers:
            t.start()
        for t in callers:
            t.join()
        assert {i: r[0] for i, r in results.items()} == {i: i * i for i in range(16)}  # each caller its own answer
        assert {r[1] for r in results.values()} == {owner.thread_id} != {threading.get_ident()}
        assert most[0] == 1  # serialised


def test_owner_thread_propagates_exceptions_and_keeps_working():
    with OwnerThread() as owner:
        with pytest.raises(ZeroDivisionError):
            owner.call(lambda: 1 / 0)
        assert owner.call(lambda a, b=0: a + b, 2, b=3) == 5
        assert owner.call(lambda: owner.call(lambda: 7)) == 7  # re-entry from the owner thread runs inline


def test_owner_thread_initializer_runs_on_it_and_close_ends_it():
    where: list[int] = []
    owner = OwnerThread(name="test-owner", initializer=lambda: where.append(threading.get_ident()))
    assert owner.thread_id is None  # started lazily, by the first call
    assert owner.call(threading.get_ident) == owner.thread_id == where[0]
    thread = next(t for t in threading.enumerate() if t.ident == owner.thread_id)
    assert thread.name.startswith("test-owner")
    owner.close()
    thread.join(timeout=5)
    assert not thread.is_alive()
    with pytest.raises(RuntimeError):
        owner.call(lambda: None)


def test_an_abandoned_owner_thread_exits():
    owner = OwnerThread()
    ident = owner.call(threading.get_ident)
    thread = next(t for t in threading.enumerate() if t.ident == ident)
    del owner  # no close(): garbage collection alone must not leave a thread behind
    thread.join(timeout=5)
    assert not thread.is_alive()


# ---------------------------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.slow
def test_cuda_graph_predictor_serves_worker_threads(tiny_model_dir, fresh_dynamo):
    """reduce-overhead on CUDA, called first from this thread and then from several at once (as the demo does)."""
    from torch._dynamo.utils import counters

    from fastcifar.serve.predictor import load_predictor

    counters.clear()
    compiled = load_predictor(tiny_model_dir, "torch-compiled", "cuda", precision="fp32")
    eager = load_predictor(tiny_model_dir, "torch", "cuda", precision="fp32")
    assert compiled._owner is not None
    pixels = _pixels(40, seed=5).numpy()
    first = compiled.logits(pixels[:3])
    results: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, compiled.logits(pixels[:n])))
               for n in (1, 5, 9, 40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    scale = np.abs(eager.logits(pixels)).max()
    for n in (1, 5, 9, 40):
        np.testing.assert_allclose(results[n], eager.logits(pixels[:n]), atol=1e-2 * scale)
    np.testing.assert_allclose(first, eager.logits(pixels[:3]), atol=1e-2 * scale)  # held across replays
    assert counters["stats"]["unique_graphs"] <= len(BATCH_BUCKETS)
