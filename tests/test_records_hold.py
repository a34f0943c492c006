"""Data and records that must not mislead: a run's held-out test images stay its own when the folder changes, a
damaged decode cache is decoded again (and says so once), and env.json describes fastcifar's own checkout only -
never the git project of a user who installed fastcifar inside theirs - with untracked source files as changes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fastcifar.cli import cli
from fastcifar.data.synthetic import make_images, write_image_folder

NAMES = ("alpha", "beta", "gamma")


def three_classes(n: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 3)
    return make_images(labels, rng), labels


@pytest.fixture()
def folder_run(tmp_path, monkeypatch):
    """A folder without test/ (its test split is held out of train/) and a run trained on it."""
    monkeypatch.setenv("FASTCIFAR_CACHE", str(tmp_path / "cache"))
    images, labels = three_classes(180, seed=0)
    folder = write_image_folder(tmp_path / "photos", images, labels, NAMES, size=32)
    result = CliRunner().invoke(cli, ["train", "--data-dir", str(folder), "--preset", "smoke", "--device", "cpu",
                                      "--epochs", "1", "--batch-size", "16", "--out", str(tmp_path / "run"),
                                      "--save-state-every", "0"])
    assert result.exit_code == 0, result.output
    return folder, tmp_path / "run"


def evaluate(run: Path, folder: Path):
    return CliRunner().invoke(cli, ["evaluate", str(run), "--data-dir", str(folder), "--device", "cpu",
                                    "--corruptions", "none", "--json"])


@pytest.mark.slow
def test_a_runs_test_split_stays_its_own_when_the_folder_changes(folder_run):
    folder, run = folder_run
    recorded = json.loads((run / "model.json").read_text())["dataset_info"]["test_files"]
    assert len(recorded) == 36 and all((folder / rel).is_file() for rel in recorded)  # 20 % of each class
    before = evaluate(run, folder)
    assert before.exit_code == 0, before.output
    first = json.loads(before.stdout)
    # Nine more images in one class: a fresh "fixed" 20 % split would now take some of the run's training images.
    extra = three_classes(9, seed=5)[0]
    for i, pixels in enumerate(extra):
        from PIL import Image

        Image.fromarray(pixels).save(folder / "train" / "beta" / f"new-{i}.png")
    from fastcifar.data.folder import load_image_folder

    moved = load_image_folder(folder, progress=False)
    assert set(moved.files["test"]) != {str(folder.resolve() / rel) for rel in recorded}  # the folder's split moved
    after = evaluate(run, folder)
    assert after.exit_code == 0, after.output
    assert "changed since the run trained: its 36 held-out test images are used" in after.stderr
    second = json.loads(after.stdout)
    assert second["n_test"] == first["n_test"] == 36
    assert second["clean"]["accuracy"] == first["clean"]["accuracy"]  # the same images, the same model
    # One of the run's test images gone: it cannot be measured on its images any more, and says so.
    (folder / recorded[0]).unlink()
    gone = evaluate(run, folder)
    assert gone.exit_code == 1 and "1 of the 36 test images the run held out are no longer readable" in gone.output
    assert "Traceback" not in gone.output


def test_a_damaged_cache_is_decoded_again_and_said_once(tmp_path, capsys):
    from fastcifar.data.folder import load_image_folder

    images, labels = three_classes(30, seed=1)
    folder = write_image_folder(tmp_path / "photos", images, labels, NAMES, size=32)
    first = load_image_folder(folder, cache_dir=tmp_path / "cache", progress=False)
    (cache,) = (tmp_path / "cache").glob("*.npz")
    cache.write_bytes(cache.read_bytes()[:200])  # truncated, as a killed copy leaves it
    capsys.readouterr()
    again = load_image_folder(folder, cache_dir=tmp_path / "cache", progress=False)
    err = capsys.readouterr().err
    assert "decoded-image cache" in err and "is damaged" in err and "decoding the folder again" in err
    assert not again.info["cached"]
    assert np.array_equal(again.train.images, first.train.images)
    third = load_image_folder(folder, cache_dir=tmp_path / "cache", progress=False)
    assert third.info["cached"] and capsys.readouterr().err == ""  # said once: the cache is whole again


def git(*args, cwd: Path) -> str:
    return subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout


def test_env_describes_fastcifars_own_checkout_only(tmp_path):
    from fastcifar.runtime import PACKAGE_DIR, fastcifar_checkout, git_diff, git_sha

    # fastcifar installed inside a user's own git project: their HEAD and their changes are not fastcifar's.
    user = tmp_path / "their-project"
    site = user / ".venv" / "site-packages"
    shutil.copytree(PACKAGE_DIR, site / "fastcifar", ignore=shutil.ignore_patterns("__pycache__"))
    git("init", "-q", cwd=user)
    (user / "app.py").write_text("print('theirs')\n")
    git("add", "app.py", cwd=user)
    git("commit", "-qm", "theirs", cwd=user)
    (user / "app.py").write_text("print('changed')\n")
    assert fastcifar_checkout(site / "fastcifar") is None
    # fastcifar's own checkout, with a new source file nobody committed yet: that is a change too.
    repo = tmp_path / "fastcifar-checkout"
    shutil.copytree(PACKAGE_DIR, repo / "fastcifar", ignore=shutil.ignore_patterns("__pycache__"))
    git("init", "-q", cwd=repo)
    git("add", "fastcifar", cwd=repo)
    git("commit", "-qm", "fastcifar", cwd=repo)
    assert fastcifar_checkout(repo / "fastcifar") == repo.resolve()
    assert git_diff(repo) == "" and len(git_sha(repo)) == 40
    (repo / "fastcifar" / "new_module.py").write_text("X = 1\n")
    diff = git_diff(repo)
    assert "new_module.py" in diff and "+X = 1" in diff
