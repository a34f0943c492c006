"""Downloading CIFAR-10 against a real HTTP server on 127.0.0.1 (Range resume, restart, md5, offline)."""

from __future__ import annotations

import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from fastcifar.data.cifar import ARCHIVE_NAME, BATCHES_DIR, ensure_cifar, load_cifar10
from fastcifar.data.download import download_archive, md5sum
from fastcifar.data.synthetic import synthetic_arrays, write_synthetic_archive
from fastcifar.errors import DataError

N_TRAIN, N_TEST, SEED = 40, 20, 3


class _Handler(BaseHTTPRequestHandler):
    """Serves `server.body` at any path; Range `bytes=N-` -> 206 unless the server is told to ignore it."""

    def do_GET(self):  # noqa: N802 - http.server API
        srv = self.server
        srv.requests.append({"path": self.path, "range": self.headers.get("Range")})
        if srv.status is not None:
            self.send_error(srv.status)
            return
        body, start = srv.body, 0
        requested = self.headers.get("Range")
        if requested and srv.honour_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", requested).group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            reported = srv.wrong_range_start if srv.wrong_range_start is not None else start
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {reported}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        chunk = body[start:]
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if srv.cut_after is not None:  # send part of the body, then drop the connection (once)
            cut, srv.cut_after = srv.cut_after, None
            self.wfile.write(chunk[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(chunk)

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[bytes, str]:
    path = write_synthetic_archive(tmp_path_factory.mktemp("archive") / ARCHIVE_NAME, n_train=N_TRAIN,
                                   n_test=N_TEST, seed=SEED)
    return path.read_bytes(), md5sum(path)


@pytest.fixture
def server(archive):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.body, srv.requests = archive[0], []
    srv.honour_range, srv.cut_after, srv.status, srv.wrong_range_start = True, None, None, None
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/cifar-10-python.tar.gz"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def _assert_loadable(data_dir: Path) -> None:
    data = load_cifar10(data_dir, download=False)
    train_images, train_labels, test_images, test_labels = synthetic_arrays(N_TRAIN, N_TEST, SEED)
    np.testing.assert_array_equal(data.train.images, train_images)
    np.testing.assert_array_equal(data.train.labels, train_labels)
    np.testing.assert_array_equal(data.test.images, test_images)
    np.testing.assert_array_equal(data.test.labels, test_labels)


def test_clean_download_is_verified_extracted_and_loadable(tmp_path, server, archive, capsys):
    data_dir = tmp_path / "new" / "data"  # created on demand
    root = ensure_cifar(data_dir, url=server.url, md5=archive[1], progress=True)
    assert root == data_dir / BATCHES_DIR
    assert (data_dir / ARCHIVE_NAME).read_bytes() == archive[0]
    assert not (data_dir / f"{ARCHIVE_NAME}.part").exists()
    assert server.requests == [{"path": "/cifar-10-python.tar.gz", "range": None}]
    assert capsys.readouterr().out == ""  # the progress bar goes to stderr: stdout carries results
    _assert_loadable(data_dir)
    ensure_cifar(data_dir, url=server.url, md5=archive[1])  # found now: no second request
    assert len(server.requests) == 1


def test_interrupted_download_keeps_part_and_resumes_with_range(tmp_path, server, archive):
    body, md5 = archive
    server.cut_after = len(body) // 3
    part = tmp_path / f"{ARCHIVE_NAME}.part"
    with pytest.raises(DataError) as err:
        ensure_cifar(tmp_path, url=server.url, md5=md5, progress=False)
    assert "interrupted" in str(err.value) and str(part) in str(err.value)
    assert part.read_bytes() == body[:len(body) // 3]  # the prefix is kept for resuming
    assert not (tmp_path / ARCHIVE_NAME).exists() and not (tmp_path / BATCHES_DIR).exists()

    ensure_cifar(tmp_path, url=server.url, md5=md5, progress=False)
    assert [r["range"] for r in server.requests] == [None, f"bytes={len(body) // 3}-"]
    assert (tmp_path / ARCHIVE_NAME).read_bytes() == body
    assert not part.exists()
    _assert_loadable(tmp_path)


def test_server_ignoring_range_restarts_the_file(tmp_path, server, archive):
    body, md5 = archive
    server.cut_after = len(body) // 2
    with pytest.raises(DataError, match="interrupted"):
        download_archive(server.url, tmp_path / ARCHIVE_NAME, md5=md5, progress=False)
    server.honour_range = False  # answers 200 with the whole file to the Range request
    download_archive(server.url, tmp_path / ARCHIVE_NAME, md5=md5, progress=False)
    assert [r["range"] for r in server.requests] == [None, f"bytes={len(body) // 2}-"]
    assert (tmp_path / ARCHIVE_NAME).read_bytes() == body  # not the half + the whole
    assert not (tmp_path / f"{ARCHIVE_NAME}.part").exists()


def test_complete_part_file_is_verified_after_416(tmp_path, server, archive):
    body, md5 = archive
    (tmp_path / f"{ARCHIVE_NAME}.part").write_bytes(body)
    download_archive(server.url, tmp_path / ARCHIVE_NAME, md5=md5, progress=False)
    assert server.requests[0]["range"] == f"bytes={len(body)}-"
    assert (tmp_path / ARCHIVE_NAME).read_bytes() == body


def test_stale_corrupt_part_is_deleted_then_retry_succeeds(tmp_path, server, archive):
    body, md5 = archive
    part = tmp_path / f"{ARCHIVE_NAME}.part"
    part.write_bytes(b"x" * (len(body) + 10))  # longer than the file: 416, then md5 mismatch
    with pytest.raises(DataError, match="md5"):
        download_archive(server.url, tmp_path / ARCHIVE_NAME, md5=md5, progress=False)
    assert not part.exists() and not (tmp_path / ARCHIVE_NAME).exists()
    download_archive(server.url, tmp_path / ARCHIVE_NAME, md5=md5, progress=False)
    assert (tmp_path / ARCHIVE_NAME).read_bytes() == body


def test_resume_answered_from_the_wrong_offset_is_not_appended(tmp_path, server, archive):
    body, md5 = archive
    server.cut_after = 1000
    with pytest.raises(DataError, match="interrupted"):
        download_archive(server.url, tmp_path / ARCHIVE_NAME, md5=md5, progress=False)
    server.wrong_range_start = 0  # claims 206 "bytes 0-..." although asked for bytes=1000-
    with pytest.raises(DataError, match="not from byte 1000"):
        download_archive(server.url, tmp_path / ARCHIVE_NAME, md5=md5, progress=False)
    assert not (tmp_path / f"{ARCHIVE_NAME}.part").exists() and not (tmp_path / ARCHIVE_NAME).exists()


def test_wrong_md5_deletes_part_and_leaves_no_archive(tmp_path, server, archive):
    with pytest.raises(DataError) as err:
        ensure_cifar(tmp_path, url=server.url, md5="0" * 32, progress=False)
    assert "md5" in str(err.value) and archive[1] in str(err.value) and server.url in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no .part, no archive, no batches


def test_http_error_is_one_offline_message(tmp_path, server, archive):
    server.status = 404
    with pytest.raises(DataError) as err:
        ensure_cifar(tmp_path, url=server.url, md5=archive[1], progress=False)
    assert "HTTP 404" in str(err.value) and "--data-dir" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_connection_refused_mentions_data_dir(tmp_path, archive):
    with socket.socket() as sock:  # bound but not listening: connecting is refused
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/{ARCHIVE_NAME}"
        with pytest.raises(DataError) as err:
            ensure_cifar(tmp_path, url=url, md5=archive[1], progress=False)
    message = str(err.value)
    assert "refused" in message.lower() and url in message
    assert "--data-dir" in message and ARCHIVE_NAME in message and str(tmp_path) in message
    assert list(tmp_path.iterdir()) == []


def test_no_download_with_empty_dir_makes_no_request(tmp_path, server, archive):
    with pytest.raises(DataError) as err:
        ensure_cifar(tmp_path, download=False, url=server.url, md5=archive[1])
    assert "--no-download" in str(err.value) and "--data-dir" in str(err.value)
    assert server.requests == [] and list(tmp_path.iterdir()) == []


def test_data_dir_that_is_a_file(tmp_path, server, archive):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(DataError, match="cannot create"):
        ensure_cifar(not_a_dir, url=server.url, md5=archive[1], progress=False)
    assert server.requests == []
