"""Predictors (torch, torch-compiled, ONNX Runtime on CPU; TensorRT on a GPU), load_image and the artifact cache."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastcifar.errors import FastCifarError
from fastcifar.serve.predictor import load_image


@pytest.fixture(scope="module")
def pixels():
    """Real-looking test pixels: the synthetic test split (class-coloured squares), not random noise."""
    from fastcifar.data.synthetic import make_images

    rng = np.random.default_rng(1)
    return make_images(np.arange(12) % 10, rng)


@pytest.fixture(scope="module")
def onnx_file(tiny_model_dir, tmp_path_factory):
    from fastcifar.export import export_onnx

    return export_onnx(tiny_model_dir, tmp_path_factory.mktemp("onnx") / "tiny.onnx", verify=False).path


def _reference_logits(model_dir, images):
    """The model applied by hand: (x/255 - mean)/std in NCHW, eager fp32 - independent of the predictor code."""
    import torch

    from fastcifar.models import load_model

    model, spec, _ = load_model(model_dir)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    if spec.image_size != 32:
        x = torch.nn.functional.interpolate(x, size=(spec.image_size,) * 2, mode="bilinear", align_corners=False)
    with torch.no_grad():
        return model(x).numpy()


# ---------------------------------------------------------------------------------------------- load_image


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def test_png_of_model_size_passes_through_bit_for_bit(tmp_path, pixels):
    path = _save(Image.fromarray(pixels[0]), tmp_path / "a.png")
    assert np.array_equal(load_image(path, 32), pixels[0])
    assert np.array_equal(load_image(path.read_bytes(), 32), pixels[0])  # bytes
    assert np.array_equal(load_image(Image.open(path), 32), pixels[0])  # PIL image
    with open(path, "rb") as fh:
        assert np.array_equal(load_image(fh, 32), pixels[0])  # file object


def test_colour_modes_become_rgb(tmp_path, pixels):
    grey = load_image(_save(Image.fromarray(pixels[0]).convert("L"), tmp_path / "g.png"), 32)
    assert grey.shape == (32, 32, 3) and np.array_equal(grey[..., 0], grey[..., 2])
    rgba = np.dstack([pixels[0], np.zeros((32, 32), np.uint8)])  # fully transparent
    assert (load_image(_save(Image.fromarray(rgba), tmp_path / "t.png"), 32) == 255).all()  # over white
    half = np.dstack([pixels[0], np.full((32, 32), 255, np.uint8)])  # opaque: the colours themselves
    assert np.array_equal(load_image(_save(Image.fromarray(half), tmp_path / "o.png"), 32), pixels[0])
    cmyk = load_image(_save(Image.fromarray(pixels[0]).convert("CMYK"), tmp_path / "c.jpg", quality=95), 32)
    assert cmyk.shape == (32, 32, 3) and cmyk.dtype == np.uint8
    palette = load_image(_save(Image.fromarray(pixels[0]).convert("P"), tmp_path / "p.gif"), 32)
    assert palette.shape == (32, 32, 3)
    sixteen = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 64)  # spans the 16-bit range
    out = load_image(_save(Image.fromarray(sixteen), tmp_path / "s.png"), 32)
    assert out.max() > 200 and out.min() == 0  # scaled, not clipped to white


def test_jpeg_and_webp_close_to_the_original(tmp_path):
    # a smooth photo-like image (lossy codecs are made for these, not for per-pixel noise)
    ramp = np.linspace(0, 255, 32)
    smooth = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 255 - ramp[None, :]), -1).astype(np.uint8)
    for name, kwargs in (("a.jpg", {"quality": 95}), ("a.webp", {"quality": 95})):
        out = load_image(_save(Image.fromarray(smooth), tmp_path / name, **kwargs), 32)
        assert np.abs(out.astype(int) - smooth).mean() < 4


def test_resize_crops_the_centre_square_and_handles_huge_jpegs(tmp_path):
    wide = np.zeros((32, 96, 3), np.uint8)
    wide[:, 32:64] = (200, 30, 30)  # the centre third is red, the sides black
    out = load_image(_save(Image.fromarray(wide), tmp_path / "wide.png"), 32)
    assert np.array_equal(out, wide[:, 32:64])
    big = np.zeros((3000, 4000, 3), np.uint8)
    big[:, :, 2] = 180
    out = load_image(_save(Image.fromarray(big), tmp_path / "big.jpg", quality=90), 32)
    assert out.shape == (32, 32, 3) and abs(int(out[..., 2].mean()) - 180) < 6


def test_animated_gif_uses_the_first_frame_and_exif_rotation_is_applied(tmp_path):
    frames = [Image.fromarray(np.full((40, 40, 3), v, np.uint8)) for v in (20, 220)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert load_image(tmp_path / "anim.gif", 32).max() < 40
    tall = np.zeros((64, 32, 3), np.uint8)
    tall[:32] = 255  # top half white; stored sideways with EXIF "rotate 90 CW to display"
    stored = Image.fromarray(np.rot90(tall, 1).copy())
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "rot.jpg", 32)
    assert out.shape == (32, 32, 3)
    # upright, the 32x64 image becomes 64 tall: the centre crop spans both halves, white above black
    assert out[:8].mean() > 200 and out[-8:].mean() < 50


@pytest.mark.parametrize("make", [
    lambda d: d / "missing.png",
    lambda d: d,
    lambda d: (d / "text.png").write_text("not an image") and d / "text.png",
    lambda d: (d / "cut.png").write_bytes(_png_bytes()[:120]) and d / "cut.png",
    lambda d: b"\x89PNG\r\n\x1a\n garbage",
], ids=["missing", "directory", "not-an-image", "truncated", "garbage-bytes"])
def test_unreadable_input_is_a_clear_error(tmp_path, make):
    with pytest.raises(FastCifarError) as info:
        load_image(make(tmp_path), 32)
    assert "Traceback" not in str(info.value) and len(str(info.value).splitlines()) == 1


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_find_images_walks_directories_and_reports_missing(tmp_path, pixels):
    from fastcifar.data.images import find_images

    (tmp_path / "sub").mkdir()
    for name in ("b.png", "sub/a.jpg"):
        Image.fromarray(pixels[0]).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    files, problems = find_images([tmp_path, tmp_path / "nope.png", tmp_path / "empty"])
    assert [f.name for f in files] == ["b.png", "a.jpg"]
    assert [p for p, _ in problems] == [str(tmp_path / "nope.png"), str(tmp_path / "empty")]


# ---------------------------------------------------------------------------------------------- torch


def test_torch_predictor_matches_the_model_applied_by_hand(tiny_model_dir, pixels):
    from fastcifar.serve.predictor import load_predictor

    predictor = load_predictor(tiny_model_dir, device="cpu")
    assert (predictor.backend, predictor.input_size, len(predictor.class_names)) == ("torch", 32, 10)
    logits = predictor.logits(pixels)
    np.testing.assert_allclose(logits, _reference_logits(tiny_model_dir, pixels), atol=1e-4)
    probs = predictor.predict(pixels)
    assert probs.dtype == np.float32 and probs.shape == (len(pixels), 10)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    predictor.max_batch = 5  # chunking must not change anything
    np.testing.assert_allclose(predictor.logits(pixels), logits, atol=1e-5)


def test_torch_predictor_resizes_for_larger_models(tmp_path, pixels):
    from conftest import make_saved_model

    from fastcifar.serve.predictor import load_predictor

    model_dir = make_saved_model(tmp_path / "r18-48", image_size=48)
    predictor = load_predictor(model_dir, "torch", "cpu")
    assert (predictor.input_size, predictor.image_size) == (32, 48)
    np.testing.assert_allclose(predictor.logits(pixels[:4]), _reference_logits(model_dir, pixels[:4]), atol=1e-4)


def test_predictor_rejects_wrong_pixels(tiny_model_dir, pixels):
    from fastcifar.serve.predictor import load_predictor

    predictor = load_predictor(tiny_model_dir, device="cpu")
    for bad in (pixels[0], pixels.astype(np.float32), pixels[:, :16]):
        with pytest.raises(FastCifarError, match=r"uint8 pixels of shape \(N, 32, 32, 3\)"):
            predictor.predict(bad)
    assert predictor.predict(pixels[:0]).shape == (0, 10)


@pytest.mark.slow
def test_torch_compiled_predictor_agrees_with_eager(tiny_model_dir, pixels):
    from fastcifar.serve.predictor import load_predictor

    compiled = load_predictor(tiny_model_dir, "torch-compiled", "cpu")
    assert compiled.backend == "torch-compiled"
    eager = load_predictor(tiny_model_dir, "torch", "cpu").logits(pixels[:4])
    np.testing.assert_allclose(compiled.logits(pixels[:4]), eager, atol=1e-4)


# ---------------------------------------------------------------------------------------------- onnxruntime


def test_onnxruntime_predictor_same_top1_as_torch(tiny_model_dir, onnx_file, pixels):
    from fastcifar.serve.predictor import load_predictor

    ort_predictor = load_predictor(onnx_file, device="cpu")  # backend from the file type
    assert ort_predictor.backend == "onnxruntime"
    assert ort_predictor.describe()["providers"] == ["CPUExecutionProvider"]
    assert ort_predictor.class_names == load_predictor(tiny_model_dir, device="cpu").class_names
    torch_logits = load_predictor(tiny_model_dir, device="cpu").logits(pixels)
    ort_logits = ort_predictor.logits(pixels)
    assert np.array_equal(ort_logits.argmax(1), torch_logits.argmax(1))
    assert np.abs(ort_logits - torch_logits).max() < 1e-3


def test_normalized_input_onnx_gets_the_same_preprocessing(tiny_model_dir, tmp_path, pixels):
    from fastcifar.export import export_onnx
    from fastcifar.serve.predictor import load_predictor

    path = export_onnx(tiny_model_dir, tmp_path / "n.onnx", input_kind="normalized", verify=False).path
    predictor = load_predictor(path, device="cpu")
    assert predictor.input_size == 32
    np.testing.assert_allclose(predictor.logits(pixels), _reference_logits(tiny_model_dir, pixels), atol=1e-3)


def test_run_dir_on_onnxruntime_exports_once_into_the_cache(tmp_path, pixels):
    from conftest import make_saved_model

    from fastcifar.serve.predictor import load_predictor
    from fastcifar.models import load_model, save_model

    model_dir = make_saved_model(tmp_path / "run", seed=3)
    cache = tmp_path / "cache"
    first = load_predictor(model_dir, "onnxruntime", "cpu", cache_dir=cache)
    entries = sorted(p for p in cache.iterdir() if not p.name.startswith("."))
    assert len(entries) == 1 and first.artifact == entries[0] / "model.onnx"
    assert json.loads((entries[0] / "cache.json").read_text())["source"].endswith("model.safetensors")
    mtime = first.artifact.stat().st_mtime_ns
    again = load_predictor(model_dir, "onnxruntime", "cpu", cache_dir=cache)
    assert again.artifact == first.artifact and again.artifact.stat().st_mtime_ns == mtime  # reused
    model, spec, meta = load_model(model_dir)
    with __import__("torch").no_grad():
        model.fc.bias += 1.0  # a retrained model: new weights -> a new cache entry
    save_model(model, spec, model_dir, metrics=meta.get("metrics"))
    changed = load_predictor(model_dir, "onnxruntime", "cpu", cache_dir=cache)
    assert changed.artifact != first.artifact
    assert not list(cache.glob(".*")), "no temporary directories left behind"


def test_failed_export_leaves_no_cache_entry(tmp_path, monkeypatch):
    from fastcifar.serve import artifacts

    def broken(tmp_dir):
        (tmp_dir / "model.onnx").write_bytes(b"half")
        raise FastCifarError("export failed half-way")

    with pytest.raises(FastCifarError, match="half-way"):
        artifacts._cache_entry(tmp_path, "run", "k" * 64, "model.onnx", broken, {})
    assert list(tmp_path.iterdir()) == []


def test_backend_and_file_type_mismatches_are_explained(tiny_model_dir, onnx_file, tmp_path):
    from fastcifar.serve.predictor import backend_unavailable, load_predictor

    with pytest.raises(FastCifarError, match="cannot be turned into one"):
        load_predictor(onnx_file, "torch", "cpu")
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(FastCifarError, match="not a model fastcifar can run"):
        load_predictor(tmp_path / "model.bin")
    with pytest.raises(FastCifarError, match="does not exist"):
        load_predictor(tmp_path / "nope.onnx")
    with pytest.raises(FastCifarError, match="unknown backend"):
        load_predictor(tiny_model_dir, "tflite")
    with pytest.raises(FastCifarError, match="CUDA GPU"):
        load_predictor(onnx_file, "tensorrt", "cpu")
    assert "CUDA GPU" in backend_unavailable("tensorrt", "cpu")
    assert backend_unavailable("torch", "cpu") is None and backend_unavailable("onnxruntime", "cpu") is None


def test_metadata_is_decoded_once_into_a_spec():
    from fastcifar.preprocess import decode_metadata, spec_from_metadata

    raw = {"fastcifar.class_names": '["a", "b"]', "fastcifar.mean": "[0.5, 0.5, 0.5]",
           "fastcifar.std": "[0.2, 0.2, 0.2]", "fastcifar.input_size": "32", "fastcifar.arch": "resnet18",
           "pytorch.version": "2.14"}  # another producer's entry is dropped
    decoded = {"class_names": ["a", "b"], "mean": [0.5] * 3, "std": [0.2] * 3, "input_size": 32, "arch": "resnet18"}
    assert decode_metadata(raw) == decoded
    assert spec_from_metadata(decode_metadata(raw)) == spec_from_metadata(decoded)
    assert spec_from_metadata(decoded)["input_kind"] == "raw"
    with pytest.raises(FastCifarError, match="never guessed"):
        spec_from_metadata({"class_names": ["a"]})


# ---------------------------------------------------------------------------------------------- tensorrt runner


class _Enum:
    def __init__(self, name):
        self.name = name


class _FakeContext:
    def __init__(self):
        self.shapes, self.addresses, self.streams = {}, {}, []

    def set_input_shape(self, name, shape):
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name):
        return (self.shapes["pixels"][0], 10)

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def execute_async_v3(self, stream):
        self.streams.append(stream)
        return True


class _FakeEngine:
    """The engine surface EngineRunner uses, as TensorRT 10/11 expose it."""

    num_io_tensors = 2
    names = ("pixels", "logits")

    def __init__(self):
        self.context = _FakeContext()

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return _Enum("INPUT" if name == "pixels" else "OUTPUT")

    def get_tensor_dtype(self, name):
        return _Enum("UINT8" if name == "pixels" else "FLOAT")

    def get_tensor_profile_shape(self, name, profile):
        return [(1, 32, 32, 3), (256, 32, 32, 3), (1024, 32, 32, 3)]

    def create_execution_context(self):
        return self.context


def test_engine_runner_binds_tensors_and_checks_the_profile():
    import torch

    from fastcifar.serve.trt_runner import EngineRunner, torch_dtype

    assert torch_dtype(_Enum("HALF")) is torch.float16 and torch_dtype("DataType.BF16") is torch.bfloat16
    with pytest.raises(FastCifarError, match="FP8"):
        torch_dtype(_Enum("FP8"))
    engine = _FakeEngine()
    class FakeStream:  # the ordering calls, without CUDA
        def __init__(self):
            self.calls = []

        def begin(self, x):
            self.calls.append("begin")
            return 1234

        def end(self, x, out):
            self.calls.append("end")

    stream = FakeStream()
    runner = EngineRunner(engine, stream=stream)
    assert (runner.input, runner.output, runner.min_batch, runner.max_batch) == ("pixels", "logits", 1, 1024)
    x = torch.zeros(8, 32, 32, 3, dtype=torch.uint8)
    out = runner(x)
    ctx = engine.context
    assert ctx.shapes == {"pixels": (8, 32, 32, 3)} and ctx.streams == [1234]  # its own stream, not 0
    assert stream.calls == ["begin", "end"]  # waits on the caller's stream, then the caller waits on it
    assert ctx.addresses == {"pixels": x.data_ptr(), "logits": out.data_ptr()}
    assert out.shape == (8, 10) and out.dtype == torch.float32
    with pytest.raises(FastCifarError, match="outside the engine's profile 1..1024"):
        runner(torch.zeros(1025, 32, 32, 3, dtype=torch.uint8))
    with pytest.raises(FastCifarError, match="takes torch.uint8"):
        runner(torch.zeros(2, 32, 32, 3))


@pytest.mark.tensorrt
def test_tensorrt_predictor_same_top1_as_torch(tiny_model_dir, tmp_path, pixels):
    from fastcifar.serve.predictor import load_predictor

    predictor = load_predictor(tiny_model_dir, "tensorrt", "cuda", cache_dir=tmp_path)
    assert predictor.backend == "tensorrt" and predictor.artifact.suffix == ".engine"
    trt_logits = predictor.logits(pixels)
    torch_logits = load_predictor(tiny_model_dir, "torch", "cpu").logits(pixels)
    assert np.array_equal(trt_logits.argmax(1), torch_logits.argmax(1))
    x = predictor.to_input(pixels)
    assert x.is_cuda and predictor.run(x).is_cuda  # device in, device out: no host round trip
