"""What only a CUDA GPU can show, run by bench/gpu_check.sh's first step (`pytest -m gpu`): CUDA training with the
CUDA defaults, the EMA without a host sync, the whitened stem on the device, export parity of a GPU-trained model.
(The DALI-vs-tensor pixel test is in test_loaders.py, CUDA-graph serving from threads in test_serving_buckets.py.)
Each takes seconds: the check's whole step has ~48 s."""

from __future__ import annotations

import pytest
import torch

from fastcifar.config import TrainConfig
from fastcifar.train.levers import DeviceEMA, whiten_first_conv
from fastcifar.train.loop import train

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory, synthetic_dir):
    cfg = TrainConfig(data_dir=str(synthetic_dir), out=str(tmp_path_factory.mktemp("gpu") / "run"), stem="imagenet",
                      epochs=4, batch_size=32, lr=0.05, warmup_epochs=0.5, device="cuda", loader="tensor",
                      download=False, train_limit=400, compile=False, ema=0.8, ema_every=2)
    return train(cfg, progress=False)


def test_cuda_training_learns_with_the_cuda_defaults(cuda_run):
    s = cuda_run.summary
    assert s["device"].startswith("cuda") and s["precision"] == "bf16" and s["channels_last"] is True
    assert s["cudnn_benchmark"] is True and s["loader"] == "tensor"
    assert s["test_acc"] > 0.3  # learnable synthetic data: chance is 0.1


def test_device_ema_updates_without_a_host_sync():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)).cuda()
    ema = DeviceEMA(net, 0.9, every=2)
    ema.update(2)  # the first update copies
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host<->device sync inside the updates raises
    try:
        for step in range(3, 40):
            with torch.no_grad():
                for p in net.parameters():
                    p.add_(0.01)
            ema.update(step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert ema.updates == 19
    assert all(a.device.type == "cuda" for a in ema.module.parameters())


def test_whitened_stem_is_computed_on_the_device():
    from fastcifar.models import build_resnet

    model = build_resnet("resnet18", "cifar", 10).cuda()
    images = torch.randn(16, 3, 32, 32, device="cuda")
    assert whiten_first_conv(model, images) == 27 and model.conv1.weight.is_cuda


def test_gpu_trained_model_exports_with_parity(cuda_run, tmp_path, synthetic_dir):
    from fastcifar.export import export_onnx

    result = export_onnx(cuda_run.run_dir, tmp_path / "out", data_dir=synthetic_dir, max_images=200)
    assert result.parity["passed"] and result.parity["top1_agreement"] >= 0.99, result.parity
