"""Data layer: find / verify / safely unpickle / extract CIFAR-10 (fastcifar.data.cifar) on synthetic files."""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from fastcifar.data.cifar import (ARCHIVE_NAME, BATCHES_DIR, CLASS_NAMES, META_FILE, TEST_FILES, TRAIN_FILES,
                                  CifarSplit, UnsafePickleError, default_data_dir, ensure_cifar,
                                  find_batches_dir, load_batch, load_cifar10, restricted_load, split_stats)
from fastcifar.data.download import md5sum
from fastcifar.data.synthetic import (malicious_pickle, synthetic_arrays, write_synthetic_archive,
                                      write_synthetic_cifar)
from fastcifar.errors import DataError

N_TRAIN, N_TEST, SEED = 53, 17, 7  # 53 over five batches: 11,11,11,10,10 images (fewer than 10,000 each)


def _write_dataset(root: Path, protocol: int = 2) -> Path:
    return write_synthetic_cifar(root, n_train=N_TRAIN, n_test=N_TEST, seed=SEED, protocol=protocol)


def _assert_matches_synthetic(data) -> None:
    train_images, train_labels, test_images, test_labels = synthetic_arrays(N_TRAIN, N_TEST, SEED)
    assert data.train.images.dtype == np.uint8 and data.train.images.shape == (N_TRAIN, 32, 32, 3)
    assert data.test.images.dtype == np.uint8 and data.test.images.shape == (N_TEST, 32, 32, 3)
    assert data.train.labels.dtype == np.int64 and data.test.labels.dtype == np.int64
    np.testing.assert_array_equal(data.train.images, train_images)
    np.testing.assert_array_equal(data.train.labels, train_labels)
    np.testing.assert_array_equal(data.test.images, test_images)
    np.testing.assert_array_equal(data.test.labels, test_labels)
    assert data.class_names == CLASS_NAMES


def _batch(n: int = 4, labels=None, **overrides) -> dict:
    rng = np.random.default_rng(n)
    batch = {"batch_label": "b", "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
             "labels": list(range(n)) if labels is None else labels}
    batch.update(overrides)
    return batch


def _dump(path: Path, obj, protocol: int = 2) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def _no_extract_leftovers(data_dir: Path) -> bool:
    return not list(data_dir.glob(".extract-*"))


# ---------------------------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_round_trip_exact_pixels_and_labels(tmp_path, protocol):
    batches = _write_dataset(tmp_path, protocol=protocol)
    data = load_cifar10(tmp_path, download=False)
    assert data.root == batches
    _assert_matches_synthetic(data)
    assert data.train.images.flags["C_CONTIGUOUS"]


@pytest.mark.parametrize("protocol", [2, 4])
def test_dataset_with_empty_batches(tmp_path, protocol):
    """3 training images over five batches: two batches are empty (protocol 2 pickles b"" as bytes())."""
    write_synthetic_cifar(tmp_path, n_train=3, n_test=2, seed=1, protocol=protocol)
    data = load_cifar10(tmp_path, download=False)
    train_images, train_labels, test_images, test_labels = synthetic_arrays(3, 2, 1)
    np.testing.assert_array_equal(data.train.images, train_images)
    np.testing.assert_array_equal(data.train.labels, train_labels)
    np.testing.assert_array_equal(data.test.images, test_images)
    assert split_stats(data.train)["count"] == 3


def test_channel_major_rows_become_hwc(tmp_path):
    # Row layout of a CIFAR batch: 1024 R, then 1024 G, then 1024 B, each row-major over (y, x).
    n = 3
    i, c, y, x = np.meshgrid(np.arange(n), np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    values = ((i * 7 + c * 50 + y * 3 + x) % 256).astype(np.uint8)  # (n, 3, 32, 32)
    rows = values.reshape(n, 3072)
    assert rows[1, 1024 * 2 + 32 * 5 + 9] == (7 + 100 + 15 + 9) % 256  # the layout the test assumes
    split = load_batch(_dump(tmp_path / "data_batch_1", {"data": rows, "labels": [0, 1, 2]}))
    assert split.images.shape == (n, 32, 32, 3)
    for ii, yy, xx, cc in [(0, 0, 0, 0), (1, 5, 9, 2), (2, 31, 0, 1), (2, 17, 30, 0)]:
        assert split.images[ii, yy, xx, cc] == (ii * 7 + cc * 50 + yy * 3 + xx) % 256
    np.testing.assert_array_equal(split.labels, [0, 1, 2])


def test_layout_batches_dir_and_batch_files_directly(tmp_path):
    batches = _write_dataset(tmp_path)
    assert find_batches_dir(tmp_path) == batches
    assert find_batches_dir(batches) == batches
    _assert_matches_synthetic(load_cifar10(batches, download=False))  # --data-dir pointing at the files
    assert find_batches_dir(tmp_path / "empty") is None


def test_layout_archive_is_verified_and_extracted(tmp_path):
    archive = write_synthetic_archive(tmp_path / ARCHIVE_NAME, n_train=N_TRAIN, n_test=N_TEST, seed=SEED)
    assert not (tmp_path / BATCHES_DIR).exists()
    data = load_cifar10(tmp_path, download=False, md5=md5sum(archive))
    assert data.root == tmp_path / BATCHES_DIR
    assert sorted(p.name for p in data.root.iterdir()) == sorted([*TRAIN_FILES, *TEST_FILES, META_FILE])
    _assert_matches_synthetic(data)
    assert _no_extract_leftovers(tmp_path)
    archive.unlink()  # once extracted, the archive is no longer needed
    _assert_matches_synthetic(load_cifar10(tmp_path, download=False))


def test_archive_with_wrong_md5_on_disk_is_refused(tmp_path):
    archive = write_synthetic_archive(tmp_path / ARCHIVE_NAME, n_train=N_TRAIN, n_test=N_TEST, seed=SEED)
    with pytest.raises(DataError) as err:
        ensure_cifar(tmp_path, download=False, md5="0" * 32)
    assert str(archive) in str(err.value) and md5sum(archive) in str(err.value)
    assert not (tmp_path / BATCHES_DIR).exists()
    assert archive.exists()  # the user's file is not touched


def test_official_style_archive_with_extra_files(tmp_path):
    """The official archive has a top directory entry and a readme.html beside the batches."""
    src = _write_dataset(tmp_path / "src")
    archive = tmp_path / "data" / ARCHIVE_NAME
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=f"./{BATCHES_DIR}", recursive=False)
        readme = b"<html>CIFAR-10</html>"
        info = tarfile.TarInfo(f"{BATCHES_DIR}/readme.html")
        info.size = len(readme)
        tar.addfile(info, io.BytesIO(readme))
        for name in [*TRAIN_FILES, *TEST_FILES, META_FILE]:
            tar.add(src / name, arcname=f"{BATCHES_DIR}/{name}")
    _assert_matches_synthetic(load_cifar10(archive.parent, download=False, md5=md5sum(archive)))
    assert (archive.parent / BATCHES_DIR / "readme.html").read_bytes() == readme


def test_archive_extracts_into_an_incomplete_existing_batches_dir(tmp_path):
    archive = write_synthetic_archive(tmp_path / ARCHIVE_NAME, n_train=N_TRAIN, n_test=N_TEST, seed=SEED)
    (tmp_path / BATCHES_DIR).mkdir()
    (tmp_path / BATCHES_DIR / META_FILE).write_bytes(b"stale leftover")  # not a batch: layout not found
    _assert_matches_synthetic(load_cifar10(tmp_path, download=False, md5=md5sum(archive)))
    assert _no_extract_leftovers(tmp_path)


def test_archive_that_is_not_a_tarball(tmp_path):
    archive = tmp_path / ARCHIVE_NAME
    archive.write_bytes(b"\x1f\x8b\x08 this is not gzip data" * 10)
    with pytest.raises(DataError, match="not a readable tar.gz"):
        ensure_cifar(tmp_path, download=False, md5=md5sum(archive))
    assert not (tmp_path / BATCHES_DIR).exists() and _no_extract_leftovers(tmp_path)


def test_archive_without_batches(tmp_path):
    archive = tmp_path / ARCHIVE_NAME
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(f"{BATCHES_DIR}/readme.html")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(DataError, match="data_batch_1"):
        ensure_cifar(tmp_path, download=False, md5=md5sum(archive))
    assert not (tmp_path / BATCHES_DIR).exists() and _no_extract_leftovers(tmp_path)


# ---------------------------------------------------------------------------------------------- pickle formats


def test_bytes_keyed_dicts(tmp_path):
    """Official batches re-pickled after reading with encoding="bytes": bytes keys and bytes class names."""
    images, labels, test_images, test_labels = synthetic_arrays(N_TRAIN, N_TEST, SEED)

    def rows(imgs):
        return np.ascontiguousarray(imgs.transpose(0, 3, 1, 2).reshape(len(imgs), 3072))

    for i, (imgs, labs) in enumerate(zip(np.array_split(images, 5), np.array_split(labels, 5))):
        _dump(tmp_path / TRAIN_FILES[i], {b"batch_label": b"x", b"data": rows(imgs), b"labels": labs.tolist()})
    _dump(tmp_path / TEST_FILES[0], {b"data": rows(test_images), b"labels": test_labels.tolist()}, protocol=4)
    _dump(tmp_path / META_FILE, {b"label_names": [n.encode() for n in CLASS_NAMES], b"num_vis": 3072})
    _assert_matches_synthetic(load_cifar10(tmp_path, download=False))


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` (BINSTRING), as in the official CIFAR-10 pickles."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    # Python 2 numpy names its reconstructor numpy.core.multiarray.
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def test_python2_official_format(tmp_path):
    images, labels, _, _ = synthetic_arrays(N_TRAIN, N_TEST, SEED)
    rows = np.ascontiguousarray(images[:12].transpose(0, 3, 1, 2).reshape(12, 3072))
    raw = _py2_pickle({b"batch_label": b"training batch 1 of 5", b"data": rows, b"labels": labels[:12].tolist(),
                       b"filenames": [b"a.png"] * 12})
    assert b"cnumpy.core.multiarray\n_reconstruct" in raw and pickle.BINSTRING in raw  # really Python-2 style
    (tmp_path / "data_batch_1").write_bytes(raw)
    split = load_batch(tmp_path / "data_batch_1")
    np.testing.assert_array_equal(split.images, images[:12])
    np.testing.assert_array_equal(split.labels, labels[:12])


# ---------------------------------------------------------------------------------------------- security


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    # Premise: this pickle really runs a command under a plain pickle.loads.
    probe = tmp_path / "probe_marker"
    pickle.loads(malicious_pickle(probe))
    assert probe.exists()

    marker = tmp_path / "marker"
    batches = _write_dataset(tmp_path / "data")
    (batches / "data_batch_2").write_bytes(malicious_pickle(marker))
    with pytest.raises(DataError) as err:
        load_cifar10(tmp_path / "data", download=False)
    assert str(batches / "data_batch_2") in str(err.value) and "not a safe" in str(err.value)
    assert "system" in str(err.value)
    assert not marker.exists()
    with pytest.raises(UnsafePickleError):
        restricted_load(malicious_pickle(marker))
    assert not marker.exists()


def _global_call_pickle(module: str, name: str, arg: str) -> bytes:
    """Protocol 0: push global module.name, call it with (arg,)."""
    return f"c{module}\n{name}\n(V{arg}\ntR.".encode()


class _Reduce:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("module,name", [("os", "system"), ("posix", "system"), ("builtins", "eval"),
                                         ("builtins", "exec"), ("builtins", "getattr"), ("subprocess", "Popen"),
                                         ("numpy", "load"), ("numpy.testing._private.utils", "runstring"),
                                         ("__builtin__", "eval")])
def test_other_dangerous_globals_are_refused(tmp_path, module, name):
    marker = tmp_path / "marker"
    with pytest.raises(UnsafePickleError, match=f"{module}.{name}"):
        restricted_load(_global_call_pickle(module, name, f"touch {marker}"))
    assert not marker.exists()


def test_protocol4_stack_global_exploit_is_refused(tmp_path):
    import os

    marker = tmp_path / "marker"
    raw = pickle.dumps({"data": _Reduce(os.system, (f"touch '{marker}'",)), "labels": [0]}, protocol=4)
    with pytest.raises(UnsafePickleError):
        restricted_load(raw)
    assert not marker.exists()


def test_codecs_encode_admitted_only_as_latin1():
    assert restricted_load(_global_call_pickle("_codecs", "encode", r"abc\u00ff")[:-3] + b"Vlatin1\ntR.") \
        == b"abc\xff"
    with pytest.raises(UnsafePickleError, match="rot13"):
        restricted_load(_global_call_pickle("_codecs", "encode", "abc")[:-3] + b"Vrot13\ntR.")


# ---------------------------------------------------------------------------------------------- corrupt files


@pytest.mark.parametrize("keep", [0, 1, 40, 0.5, -1])
def test_truncated_batch(tmp_path, keep):
    batches = _write_dataset(tmp_path)
    path = batches / "test_batch"
    raw = path.read_bytes()
    cut = int(len(raw) * keep) if isinstance(keep, float) else (len(raw) + keep if keep < 0 else keep)
    path.write_bytes(raw[:cut])
    with pytest.raises(DataError) as err:
        load_cifar10(tmp_path, download=False)
    assert str(path) in str(err.value) and "corrupt or truncated" in str(err.value)


@pytest.mark.parametrize("content", [b"\x00\x01garbage\xff" * 100, b"hello, I am a text file\n",
                                     np.random.default_rng(0).bytes(5000)])
def test_garbage_bytes(tmp_path, content):
    path = tmp_path / "data_batch_1"
    path.write_bytes(content)
    with pytest.raises(DataError, match="data_batch_1"):
        load_batch(path)


@pytest.mark.parametrize("data,found", [
    (np.zeros((4, 3072), np.float32), "float32"),
    (np.zeros((4, 3071), np.uint8), "(4, 3071)"),
    (np.zeros((4, 32, 32, 3), np.uint8), "(4, 32, 32, 3)"),
    (np.zeros(4 * 3072, np.uint8), "(12288,)"),
    ([[0] * 3072] * 4, "list"),
])
def test_wrong_shape_or_dtype(tmp_path, data, found):
    path = _dump(tmp_path / "data_batch_1", _batch(4, data=data))
    with pytest.raises(DataError) as err:
        load_batch(path)
    assert str(path) in str(err.value) and "(N, 3072)" in str(err.value) and found in str(err.value)


@pytest.mark.parametrize("labels", [[0, 1, 2, 10], [-1, 0, 1, 2], np.array([0, 1, 2, 255], np.uint8)])
def test_labels_out_of_range(tmp_path, labels):
    path = _dump(tmp_path / "data_batch_1", _batch(4, labels=labels))
    with pytest.raises(DataError, match=r"labels must lie in 0\.\.9"):
        load_batch(path)


@pytest.mark.parametrize("labels", [[0.0, 1.5, 2.0, 3.0], ["0", "1", "2", "3"], [[0, 1], [2, 3]], [[0], [1, 2]],
                                    [2 ** 70] * 4, "0123"])
def test_labels_not_a_flat_list_of_integers(tmp_path, labels):
    path = _dump(tmp_path / "data_batch_1", _batch(4, labels=labels))
    with pytest.raises(DataError, match="flat list of integers"):
        load_batch(path)


@pytest.mark.parametrize("n_labels", [3, 5, 0])
def test_labels_images_count_mismatch(tmp_path, n_labels):
    path = _dump(tmp_path / "data_batch_1", _batch(4, labels=[1] * n_labels))
    with pytest.raises(DataError, match=f"4 images but {n_labels} labels"):
        load_batch(path)


def test_small_and_empty_batches_are_valid(tmp_path):
    split = load_batch(_dump(tmp_path / "a", _batch(3, labels=np.array([9, 0, 4]))))
    assert split.images.shape == (3, 32, 32, 3) and split.labels.tolist() == [9, 0, 4]
    empty = load_batch(_dump(tmp_path / "b", {"data": np.zeros((0, 3072), np.uint8), "labels": []}))
    assert len(empty) == 0 and empty.images.shape == (0, 32, 32, 3)


@pytest.mark.parametrize("obj,message", [
    ([1, 2, 3], "expected a dict, found list"),
    ({"labels": [0]}, "missing 'data' or 'labels'"),
    ({"data": np.zeros((1, 3072), np.uint8)}, "missing 'data' or 'labels'"),
])
def test_not_a_batch(tmp_path, obj, message):
    path = _dump(tmp_path / "data_batch_1", obj)
    with pytest.raises(DataError, match=message):
        load_batch(path)


@pytest.mark.parametrize("missing", ["data_batch_3", "test_batch"])
def test_missing_batch(tmp_path, missing):
    batches = _write_dataset(tmp_path)
    (batches / missing).unlink()
    with pytest.raises(DataError) as err:
        load_cifar10(tmp_path, download=False)
    assert missing in str(err.value) and str(batches) in str(err.value)


def test_missing_meta_falls_back_to_official_names_and_bad_meta_is_refused(tmp_path):
    batches = _write_dataset(tmp_path)
    (batches / META_FILE).unlink()
    assert load_cifar10(tmp_path, download=False).class_names == CLASS_NAMES
    _dump(batches / META_FILE, {"label_names": ["a", "b"]})
    with pytest.raises(DataError, match="label_names"):
        load_cifar10(tmp_path, download=False)
    (batches / META_FILE).write_bytes(malicious_pickle(tmp_path / "marker"))
    with pytest.raises(DataError, match="not a safe"):
        load_cifar10(tmp_path, download=False)
    assert not (tmp_path / "marker").exists()


def test_nothing_found_without_download(tmp_path):
    with pytest.raises(DataError) as err:
        ensure_cifar(tmp_path / "nowhere", download=False)
    message = str(err.value)
    assert "--no-download" in message and "--data-dir" in message and str(tmp_path / "nowhere") in message
    assert not (tmp_path / "nowhere").exists()


# ---------------------------------------------------------------------------------------------- hostile archives


def _hostile_archive(path: Path, src: Path, evil: tarfile.TarInfo, payload: bytes = b"pwned") -> Path:
    """A legit first member (so extraction has started) followed by `evil`."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src / TRAIN_FILES[0], arcname=f"{BATCHES_DIR}/{TRAIN_FILES[0]}")
        if evil.isreg():
            evil.size = len(payload)
            tar.addfile(evil, io.BytesIO(payload))
        else:
            tar.addfile(evil)
        for name in [*TRAIN_FILES[1:], *TEST_FILES, META_FILE]:
            tar.add(src / name, arcname=f"{BATCHES_DIR}/{name}")
    return path


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize("case", ["dotdot", "nested_dotdot", "absolute", "symlink", "hardlink", "subdir",
                                  "outside_top_dir", "fifo"])
def test_hostile_archive_is_refused_and_writes_nothing_outside(tmp_path, case):
    src = _write_dataset(tmp_path / "src")
    data_dir = tmp_path / "sandbox" / "data"
    data_dir.mkdir(parents=True)
    victim = tmp_path / "sandbox" / "victim"
    victim.write_bytes(b"keep me")
    evil = {
        "dotdot": tarfile.TarInfo("../evil"),
        "nested_dotdot": tarfile.TarInfo(f"{BATCHES_DIR}/../../evil"),
        "absolute": tarfile.TarInfo(str(tmp_path / "sandbox" / "evil")),
        "symlink": _link(f"{BATCHES_DIR}/data_batch_2", str(victim), tarfile.SYMTYPE),
        "hardlink": _link(f"{BATCHES_DIR}/data_batch_2", str(victim), tarfile.LNKTYPE),
        "subdir": tarfile.TarInfo(f"{BATCHES_DIR}/sub/evil"),
        "outside_top_dir": tarfile.TarInfo("evil"),
        "fifo": _link(f"{BATCHES_DIR}/evil", "", tarfile.FIFOTYPE),
    }[case]
    assert evil.name.startswith("/") == (case == "absolute")  # tarfile kept the absolute name
    archive = _hostile_archive(data_dir / ARCHIVE_NAME, src, evil)
    with pytest.raises(DataError) as err:
        ensure_cifar(data_dir, download=False, md5=md5sum(archive))
    assert "unexpected entry" in str(err.value) and evil.name in str(err.value)
    assert victim.read_bytes() == b"keep me"
    assert sorted(p.name for p in (tmp_path / "sandbox").iterdir()) == ["data", "victim"]
    assert [p.name for p in data_dir.iterdir()] == [ARCHIVE_NAME]  # no batches dir, no temp dir


# ---------------------------------------------------------------------------------------------- stats + defaults


def test_split_stats_on_known_arrays():
    images = np.zeros((4, 32, 32, 3), np.uint8)
    images[:, :, :, 0] = 10                 # R constant: mean 10, std 0
    images[:2, :, :, 1] = 0                 # G: half the images 0, half 200: mean 100, std 100
    images[2:, :, :, 1] = 200
    images[:, :, :16, 2] = 255              # B: left half 255, right half 0: mean 127.5, std 127.5
    labels = np.array([3, 3, 9, 0], np.int64)
    stats = split_stats(CifarSplit(images=images, labels=labels))
    assert stats["count"] == 4
    assert stats["per_class"] == [1, 0, 0, 2, 0, 0, 0, 0, 0, 1]
    assert stats["mean"] == pytest.approx([10.0, 100.0, 127.5], abs=1e-4)
    assert stats["std"] == pytest.approx([0.0, 100.0, 127.5], abs=1e-4)


def test_split_stats_matches_numpy_over_several_chunks():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(2_345, 32, 32, 3), dtype=np.uint8)  # > 2 chunks of 1000
    labels = rng.integers(0, 10, size=2_345)
    stats = split_stats(CifarSplit(images=images, labels=labels))
    flat = images.reshape(-1, 3).astype(np.float64)
    assert stats["count"] == 2_345 and stats["per_class"] == np.bincount(labels, minlength=10).tolist()
    assert stats["mean"] == pytest.approx(flat.mean(0).tolist(), abs=1e-4)
    assert stats["std"] == pytest.approx(flat.std(0).tolist(), abs=1e-4)


def test_split_stats_empty():
    stats = split_stats(CifarSplit(images=np.zeros((0, 32, 32, 3), np.uint8), labels=np.zeros(0, np.int64)))
    assert stats == {"count": 0, "per_class": [0] * 10, "mean": [0.0] * 3, "std": [0.0] * 3}


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTCIFAR_DATA", str(tmp_path / "env"))
    assert default_data_dir() == tmp_path / "env"
    monkeypatch.delenv("FASTCIFAR_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".cache" / "fastcifar"


def test_load_cifar10_without_dir_uses_fastcifar_data(monkeypatch, tmp_path):
    _write_dataset(tmp_path)
    monkeypatch.setenv("FASTCIFAR_DATA", str(tmp_path))
    _assert_matches_synthetic(load_cifar10(download=False))
