"""A folder of class folders (`DIR/<class>/<images>`, torchvision's ImageFolder layout, no train/) is an image
dataset: detected by `auto`, trained on, its held-out test split drawn once, recorded by file name in the cache
directory (never in the folder) and kept when files are added or removed; and CIFAR-10 is never downloaded into a
folder of anything but CIFAR files (issue 36)."""

from __future__ import annotations

import json
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fastcifar.cli import cli
from fastcifar.data.datasets import load_dataset, resolve_dataset
from fastcifar.errors import DataError
from test_datasets import _Archive as _ServeArchive

# One colour per class, with per-pixel noise: learnable in two smoke epochs, and no two images are identical.
COLOURS = {"cat": (220, 40, 40), "dog": (40, 200, 60), "fish": (40, 60, 220)}


def add_images(folder: Path, colour, count: int, *, seed: int, start: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        pixels = np.clip(np.array(colour) + rng.integers(-30, 31, (24, 24, 3)), 0, 255).astype(np.uint8)
        paths.append(folder / f"{i:03d}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def class_tree(root: Path, counts=(20, 20, 20)) -> Path:
    for (name, colour), count, seed in zip(COLOURS.items(), counts, range(3)):
        add_images(root / name, colour, count, seed=seed)
    (root / "README.txt").write_text("my photos\n")  # a loose file beside the classes is not a class
    return root


def snapshot(root: Path) -> dict:
    """Every file and folder below `root` (and root) with its size and mtime: "nothing is written into the data
    folder" (a file created and removed again still changes its folder's mtime)."""
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in [root, *root.rglob("*")]}


def test_a_class_folder_tree_is_detected_and_other_layouts_are_not(tmp_path):
    from fastcifar.data.folder import is_class_tree
    from fastcifar.data.synthetic import write_synthetic_cifar

    tree = class_tree(tmp_path / "photos")
    assert is_class_tree(tree) and resolve_dataset("auto", tree) == "folder"
    one = tmp_path / "one"  # a single folder of images is not a one-class dataset
    add_images(one / "cat", COLOURS["cat"], 3, seed=0)
    assert not is_class_tree(one) and resolve_dataset("auto", one) == "cifar10"
    empty = tmp_path / "empty-classes"
    (empty / "cat").mkdir(parents=True)
    (empty / "dog").mkdir()
    assert not is_class_tree(empty)
    cifar = tmp_path / "cifar"  # CIFAR-10's files beside class folders: the CIFAR layout wins
    write_synthetic_cifar(cifar, n_train=10, n_test=10)
    class_tree(cifar)
    assert not is_class_tree(cifar) and resolve_dataset("auto", cifar) == "cifar10"
    with pytest.raises(DataError, match="has no train/ folder and no class folders of images"):
        load_dataset(one, "folder", cache_dir=tmp_path / "cache", progress=False)


def test_a_class_folder_tree_with_no_train_folder_trains_and_keeps_its_split(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("FASTCIFAR_CACHE", str(cache))
    tree = class_tree(tmp_path / "photos")
    before = snapshot(tree)
    runner = CliRunner()
    data = runner.invoke(cli, ["data", "--data-dir", str(tree), "--json"])
    assert data.exit_code == 0, data.output
    stats = json.loads(data.stdout)
    assert stats["dataset"] == "folder" and stats["class_names"] == list(COLOURS)
    assert stats["test_source"] == "held out of the class folders"
    assert stats["test"]["per_class"] == [4, 4, 4] and stats["train"]["per_class"] == [16, 16, 16]  # 20 % each
    record = Path(stats["split_record"])
    assert record.is_file() and record.parent.parent == cache / "folders"  # in the cache, not in the folder
    recorded = json.loads(record.read_text())
    assert len(recorded["test"]) == 12 and all((tree / rel).is_file() for rel in recorded["test"] + recorded["train"])

    run = tmp_path / "run"
    train = runner.invoke(cli, ["train", "--preset", "smoke", "--data-dir", str(tree), "--dataset", "auto",
                                "--device", "cpu", "--epochs", "2", "--out", str(run)])
    assert train.exit_code == 0, train.output
    assert "test split: held out of the class folders" in train.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["dataset"] == "folder" and summary["n_test"] == 12
    assert summary["test_acc"] > 0.6  # one colour per class; chance is 1/3 (measured 100 % after 2 epochs)
    meta = json.loads((run / "model.json").read_text())
    assert meta["class_names"] == list(COLOURS)
    assert sorted(meta["dataset_info"]["test_files"]) == recorded["test"]  # the run tested on the recorded split
    as_folder = runner.invoke(cli, ["data", "--data-dir", str(tree), "--dataset", "folder", "--json"])
    assert as_folder.exit_code == 0, as_folder.output
    assert json.loads(as_folder.stdout)["test"]["per_class"] == [4, 4, 4]
    assert json.loads(record.read_text()) == recorded  # reused, not drawn again
    assert snapshot(tree) == before  # byte for byte: nothing written into the data folder


def _sides(data) -> dict:
    from fastcifar.data.folder import relative_files

    return {rel: side for side in ("train", "test") for rel in relative_files(data.root, data.files[side])}


def test_the_recorded_split_is_stratified_and_files_added_later_never_move_recorded_ones(tmp_path):
    cache = tmp_path / "cache"
    tree = class_tree(tmp_path / "photos", counts=(10, 20, 30))
    first = load_dataset(tree, "auto", cache_dir=cache, progress=False)
    assert np.bincount(first.test.labels).tolist() == [2, 4, 6]  # 20 % of each class
    assert np.bincount(first.train.labels).tolist() == [8, 16, 24]
    again = load_dataset(tree, "auto", cache_dir=cache, progress=False)
    assert again.info["cached"] and _sides(again) == _sides(first)

    # Ten new cats: a fresh draw over 20 cats would re-deal the ten old ones; the record keeps them where they were
    # and the new ones fill the class's share of the test split (4 of 20).
    added = add_images(tree / "cat", COLOURS["cat"], 10, seed=9, start=100)
    grown = load_dataset(tree, "auto", cache_dir=cache, progress=False)
    sides = _sides(grown)
    assert {rel: sides[rel] for rel in _sides(first)} == _sides(first)
    new_sides = [sides[str(p.relative_to(tree))] for p in added]
    assert new_sides.count("test") == 2 and np.bincount(grown.test.labels).tolist() == [4, 4, 6]
    assert any("10 image(s) new since the split was recorded: 2 joined the test split" in n
               for n in grown.info["notes"])
    # Deterministic: a second cache directory draws the same first split, then assigns the same new files alike.
    other = tmp_path / "other-cache"
    for p in added:
        p.rename(p.with_suffix(".hidden"))
    load_dataset(tree, "auto", cache_dir=other, progress=False)
    for p in added:
        p.with_suffix(".hidden").rename(p)
    assert _sides(load_dataset(tree, "auto", cache_dir=other, progress=False)) == sides

    # A removed test image leaves the others where they are; put back, it returns to the test split.
    gone = next(rel for rel, side in _sides(first).items() if side == "test")
    kept = (tree / gone).read_bytes()
    (tree / gone).unlink()
    shrunk = _sides(load_dataset(tree, "auto", cache_dir=cache, progress=False))
    assert shrunk == {rel: side for rel, side in sides.items() if rel != gone}
    (tree / gone).write_bytes(kept)
    assert _sides(load_dataset(tree, "auto", cache_dir=cache, progress=False)) == sides


class _Archive(_ServeArchive):
    """test_datasets' archive server, counting the requests (the guard must refuse before any)."""

    def do_GET(self):  # noqa: N802 - http.server API
        self.server.requests += 1
        super().do_GET()


@pytest.fixture
def archive_server(tmp_path):
    from fastcifar.data.download import md5sum
    from fastcifar.data.synthetic import write_synthetic_archive

    (tmp_path / "served").mkdir()
    archive = write_synthetic_archive(tmp_path / "served" / "cifar-10-python.tar.gz", n_train=20, n_test=10)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Archive)
    server.body, server.requests = archive.read_bytes(), 0
    server.url, server.md5 = f"http://127.0.0.1:{server.server_address[1]}/c10.tar.gz", md5sum(archive)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_cifar10_is_never_downloaded_into_a_folder_of_other_files(tmp_path, monkeypatch, archive_server):
    from fastcifar.data.cifar import ensure_cifar

    monkeypatch.setenv("FASTCIFAR_CACHE", str(tmp_path / "cache"))
    tree = class_tree(tmp_path / "photos")
    loose = tmp_path / "loose"  # images, but no class folders: auto takes it for CIFAR-10
    add_images(loose, COLOURS["dog"], 3, seed=4)
    for folder, hint in ((tree, "give --dataset folder"), (loose, "point --data-dir at an empty or new directory")):
        before = snapshot(folder)
        with pytest.raises(DataError, match="nothing is downloaded into a folder of other files") as err:
            ensure_cifar(folder, url=archive_server.url, md5=archive_server.md5, progress=False)
        assert hint in str(err.value)
        result = CliRunner().invoke(cli, ["data", "--data-dir", str(folder), "--dataset", "cifar10"])
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert "Error:" in result.output and "nothing is downloaded into a folder of other files" in result.output
        assert snapshot(folder) == before
    assert archive_server.requests == 0
    # A folder holding only CIFAR files, hidden files and fastcifar's own folder cache is still downloaded into.
    own = tmp_path / "data"
    (own / "folders").mkdir(parents=True)
    (own / ".DS_Store").write_bytes(b"\0")
    monkeypatch.setenv("FASTCIFAR_CACHE", str(own))
    ensure_cifar(own, url=archive_server.url, md5=archive_server.md5, progress=False)
    assert archive_server.requests == 1 and (own / "cifar-10-batches-py" / "data_batch_1").is_file()
