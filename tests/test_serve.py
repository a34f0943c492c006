"""`fastcifar serve` on a real Triton server (PyTriton), its clients and its load test.

One server (module scope, the torch backend) answers every client test: predict --server over HTTP and gRPC agrees
with the local predictor on the same files; tritonclient sees the exported repository's contract; the load test
reports its rows and the batches Triton formed; hundreds of bad requests between good ones leave the answers
unchanged. A second server (onnxruntime) answers, then SIGTERM leaves no process behind. The checks before start-up
run without a server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fastcifar.cli import cli
from fastcifar.serve.leftovers import descendants, is_running
from fastcifar.serve.triton_server import free_ports

pytest.importorskip("pytriton", reason="the serve extra (pip install 'fastcifar[serve]') is not installed")
pytestmark = pytest.mark.slow


def start_server(model: Path, *extra: str, timeout: float = 180.0):
    """(process, ready dict) of `fastcifar serve MODEL --json` on free ports (triton_server.launch)."""
    from fastcifar.serve.triton_server import launch

    http, grpc, metrics = free_ports(3)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}
    return launch([model, "--device", "cpu", "--http-port", http, "--grpc-port", grpc, "--metrics-port", metrics,
                   *extra], timeout_s=timeout, env=env)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    """(process, ready line) of the module's server (torch, the default backend), shared by the client tests."""
    proc, ready = start_server(tiny_model_dir, "--name", "r18")
    yield proc, ready
    stop(proc)


@pytest.fixture
def server(served):
    return served[1]


@pytest.fixture(scope="module")
def image_files(tmp_path_factory, synthetic_dir):
    from PIL import Image

    from fastcifar.data.cifar import load_cifar10

    data = load_cifar10(synthetic_dir)
    folder = tmp_path_factory.mktemp("images")
    for i in range(12):
        Image.fromarray(data.test.images[i]).save(folder / f"{i:02d}.png")
    return folder


def predict_json(*args: str) -> list[dict]:
    result = CliRunner().invoke(cli, ["predict", *args, "--json", "--topk", "3"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_predict_through_the_server_agrees_with_the_local_model(server, tiny_model_dir, image_files):
    local = predict_json(str(tiny_model_dir), str(image_files), "--device", "cpu")
    for url, named in ((server["urls"]["http"], ["--name", "r18"]), (server["urls"]["grpc"], ["--name", "r18"]),
                       (server["urls"]["http"], []), (server["urls"]["grpc"], [])):
        # Without --name the server's metadata names its model (PyTriton keeps the model index behind a token).
        remote = predict_json(str(image_files), "--server", url, *named)
        assert [r["file"] for r in remote] == [r["file"] for r in local] and len(remote) == 12
        for a, b in zip(remote, local):
            assert [t["label"] for t in a["top"]] == [t["label"] for t in b["top"]]  # 100 % agreement
            assert np.allclose([t["prob"] for t in a["top"]], [t["prob"] for t in b["top"]], atol=1e-5)
            assert a["backend"] == "triton" and a["model"] == "r18" and a["precision"] == "fp32"


def test_tritonclient_sees_the_exported_repositorys_contract(server, tiny_model_dir):
    import tritonclient.grpc as tg
    import tritonclient.http as th

    from fastcifar.serve.predictor import load_predictor

    pixels = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    want = load_predictor(tiny_model_dir, device="cpu").logits(pixels)
    for module, url in ((th, server["urls"]["http"]), (tg, server["urls"]["grpc"])):
        client = module.InferenceServerClient(url.split("://")[1])
        assert client.is_server_ready() and client.is_model_ready("r18")
        request = module.InferInput("pixels", list(pixels.shape), "UINT8")
        request.set_data_from_numpy(pixels)
        got = client.infer("r18", [request]).as_numpy("logits")
        assert got.dtype == np.float32 and np.allclose(got, want, atol=1e-4)
    config = tg.InferenceServerClient(server["urls"]["grpc"].split("://")[1]).get_model_config("r18").config
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("pixels", 2, [32, 32, 3])]  # TYPE_UINT8
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [("logits", 11, [10])]  # TYPE_FP32
    assert config.max_batch_size == 256 and config.dynamic_batching.max_queue_delay_microseconds == 100
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert json.loads(params["fastcifar.class_names"])[:2] == ["airplane", "automobile"]
    assert params["fastcifar.backend"] == "torch" and params["fastcifar.input_kind"] == "raw"


def test_the_served_and_exported_configs_declare_the_same_tensors(server, tiny_model_dir, tmp_path):
    """A client written for `export --triton-repo` works against `serve`: same names, types and dims."""
    import tritonclient.grpc as tg
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    result = CliRunner().invoke(cli, ["export", str(tiny_model_dir), "--out", str(tmp_path / "out"),
                                      "--triton-repo", str(tmp_path / "repo")])
    assert result.exit_code == 0, result.output
    (entry,) = [p for p in (tmp_path / "repo").iterdir() if p.is_dir()]
    exported = text_format.Parse((entry / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    served = tg.InferenceServerClient(server["urls"]["grpc"].split("://")[1]).get_model_config("r18").config
    for a, b in ((exported.input, served.input), (exported.output, served.output)):
        assert [(t.name, t.data_type, list(t.dims)) for t in a] == [(t.name, t.data_type, list(t.dims)) for t in b]
    shared = {k for k in exported.parameters if k in served.parameters}
    assert {"fastcifar.class_names", "fastcifar.mean", "fastcifar.std", "fastcifar.image_size"} <= shared
    assert all(exported.parameters[k].string_value == served.parameters[k].string_value
               for k in ("fastcifar.class_names", "fastcifar.image_size"))


def test_a_url_that_is_not_triton_is_one_error(server, image_files):
    """The metrics port, or any web server that is not Triton: one message, not a JSON parser's traceback."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Hello(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"hello, not triton")

        def log_message(self, *args):
            pass

    other = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        for url in (server["urls"]["metrics"].rsplit("/", 1)[0], f"http://127.0.0.1:{other.server_address[1]}"):
            for named in ([], ["--name", "r18"]):
                result = CliRunner().invoke(cli, ["predict", str(image_files), "--server", url, *named])
                assert result.exit_code == 1 and "answers, but not as a Triton server" in result.output, result.output
                assert "Traceback" not in result.output and result.output.count("Error:") == 1
    finally:
        other.shutdown()
        other.server_close()


def test_load_test_reports_every_level_and_dynamic_batching(server):
    http = server["urls"]["http"]
    result = CliRunner().invoke(cli, ["load-test", http, "--name", "r18", "--concurrency", "1,6",
                                      "--requests", "24", "--duration", "30", "--metrics-url",
                                      server["urls"]["metrics"], "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert [(row["concurrency"], row["batch"]) for row in r["rows"]] == [(1, 8), (6, 8)]
    for row in r["rows"]:
        assert row["requests"] == row["ok"] == 24 and row["errors"] == 0
        assert row["images_per_s"] > 0 and row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
    assert r["rows"][0]["server_mean_batch"] == pytest.approx(8.0)  # one client: one request per execution
    assert r["rows"][1]["server_mean_batch"] > 8.0  # six clients: Triton merged queued requests
    table = CliRunner().invoke(cli, ["load-test", http, "--name", "r18", "--concurrency", "2",
                                     "--requests", "4"])
    assert table.exit_code == 0 and "load test: r18" in table.output and "server batch" in table.output


def test_bad_requests_get_errors_and_the_server_keeps_answering(server):
    import tritonclient.http as th

    client = th.InferenceServerClient(server["urls"]["http"].split("://")[1])
    good = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)

    def infer(array, dtype, model="r18", name="pixels"):
        request = th.InferInput(name, list(array.shape), dtype)
        request.set_data_from_numpy(array)
        return client.infer(model, [request]).as_numpy("logits")

    before = infer(good, "UINT8")
    bad = [
        (lambda: infer(good.astype(np.float32), "FP32"), "data-type is 'FP32'"),
        (lambda: infer(np.zeros((2, 16, 16, 3), np.uint8), "UINT8"), "unexpected shape"),
        (lambda: infer(np.zeros((0, 32, 32, 3), np.uint8), "UINT8"), "pixels"),
        (lambda: infer(np.zeros((257, 32, 32, 3), np.uint8), "UINT8"), "batch-size must be <= 256"),
        (lambda: infer(np.array([[b"not an image"]], dtype=object), "BYTES"), "data-type is 'BYTES'"),
        (lambda: infer(good, "UINT8", model="nope"), "unknown model"),
        (lambda: infer(good, "UINT8", name="images"), "unexpected inference input 'images'"),
    ]
    for round_ in range(40):  # 280 bad requests, a good one after each round
        for call, message in bad:
            with pytest.raises(Exception) as info:
                call()
            assert message in str(info.value)
        if round_ % 10 == 0:
            assert np.array_equal(infer(good, "UINT8"), before)
    import urllib.request

    request = urllib.request.Request(server["urls"]["http"] + "/v2/models/r18/infer", data=b"not json",
                                     method="POST")
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(request, timeout=30)
    assert np.array_equal(infer(good, "UINT8"), before) and client.is_model_ready("r18")


def test_an_onnxruntime_server_answers_and_sigterm_leaves_no_process(tiny_model_dir, tmp_path):
    """Another backend behind the same contract (the run exported on the fly into --cache-dir), then SIGTERM: the
    server and every child (tritonserver, PyTriton's proxy and backend stub) are gone."""
    import tritonclient.grpc as tg

    from fastcifar.serve.predictor import load_predictor

    proc, ready = start_server(tiny_model_dir, "--backend", "onnxruntime", "--cache-dir", str(tmp_path / "cache"))
    try:
        assert ready["model"] == "resnet18-random" and ready["backend"] == "onnxruntime" and ready["pid"] == proc.pid
        pixels = np.random.default_rng(3).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
        client = tg.InferenceServerClient(ready["urls"]["grpc"].split("://")[1])
        request = tg.InferInput("pixels", list(pixels.shape), "UINT8")
        request.set_data_from_numpy(pixels)
        got = client.infer("resnet18-random", [request]).as_numpy("logits")
        assert np.allclose(got, load_predictor(tiny_model_dir, device="cpu").logits(pixels), atol=1e-4)
        params = {k: v.string_value for k, v in client.get_model_config("resnet18-random").config.parameters.items()}
        assert params["fastcifar.backend"] == "onnxruntime"
        children = set(descendants(proc.pid))
        assert any("tritonserver" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                   for pid in children if is_running(pid))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        deadline = time.monotonic() + 30
        while any(is_running(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in children if is_running(pid)]
        assert "stopped" in proc.stderr.read()
    finally:
        stop(proc)


def triton_leftovers() -> set[str]:
    """What a Triton server can leave behind: PyTriton's and its proxy's shared memory, tritonserver's localized
    model folders and the Python backend's env folders (fastcifar/serve/leftovers.py)."""
    return ({p.name for p in Path("/dev/shm").glob("pytrtion*")} | {p.name for p in Path("/dev/shm").glob("psm_*")}
            | {p.name for p in Path("/tmp").glob("folder*")} | {p.name for p in Path("/tmp").glob("python_env_*")})


def test_sigterm_under_load_leaves_no_process_segment_or_folder(tiny_model_dir, tmp_path):
    """Stopped while clients send, tritonserver used to die with signal 11 and leave its stub, PyTriton's proxy,
    shared memory and temporary folders behind. Several times: whatever the server was doing, nothing survives."""
    from fastcifar.bench.load_test import LoadConfig, load_test
    from fastcifar.serve.triton_server import launch

    before = triton_leftovers()
    for round_ in range(3):
        http, grpc, metrics = free_ports(3)
        env = {**os.environ, "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}
        with open(tmp_path / f"serve-{round_}.log", "w") as log:  # a file: a full stderr pipe would block the stop
            proc, ready = launch([tiny_model_dir, "--device", "cpu", "--http-port", http, "--grpc-port", grpc,
                                  "--metrics-port", metrics], env=env, stderr=log)
        try:
            children = set(descendants(proc.pid))
            outcome = {}

            def load():
                try:
                    outcome["rows"] = load_test(LoadConfig(server=f"127.0.0.1:{http}", concurrency=(8,),
                                                           requests=100000, duration_s=60))["rows"]
                except Exception as exc:  # noqa: BLE001 - the server going away mid-test is expected here
                    outcome["error"] = str(exc)

            import threading

            clients = threading.Thread(target=load, daemon=True)
            clients.start()
            time.sleep(2.0 + round_)  # under load: requests in flight when the signal comes
            children |= set(descendants(proc.pid))
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(90) == 0, (tmp_path / f"serve-{round_}.log").read_text()[-2000:]
            clients.join(90)
            deadline = time.monotonic() + 30
            while any(is_running(pid) for pid in children) and time.monotonic() < deadline:
                time.sleep(0.2)
            left = [Path(f"/proc/{pid}/cmdline").read_bytes()[:80] for pid in children if is_running(pid)]
            assert not left, left
            assert triton_leftovers() <= before, triton_leftovers() - before
        finally:
            stop(proc)


# ---------------------------------------------------------------------------------------------- before start


def test_a_port_in_use_is_one_error_before_loading(tiny_model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", str(tiny_model_dir), "--http-port", str(port)])
    assert result.exit_code == 1 and f"port {port} on 127.0.0.1 is in use" in result.output
    assert "--http-port" in result.output and "Traceback" not in result.output and "loading" not in result.output


@pytest.mark.parametrize("args, message", [
    (["--name", "bad name!"], "is not a Triton model name"),
    (["--grpc-port", "{http}"], "are both"),
])
def test_bad_serve_options_are_refused(tiny_model_dir, args, message):
    http = free_ports(1)[0]
    args = [a.format(http=http) for a in args]
    result = CliRunner().invoke(cli, ["serve", str(tiny_model_dir), "--http-port", str(http), *args])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_not_a_model_and_a_missing_extra_are_one_line(tmp_path, tiny_model_dir, monkeypatch):
    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "nowhere"), "--http-port", str(free_ports(1)[0])])
    assert result.exit_code != 0 and "does not exist" in result.output and "Traceback" not in result.output
    monkeypatch.setitem(sys.modules, "pytriton.triton", None)  # as if the extra were not installed
    result = CliRunner().invoke(cli, ["serve", str(tiny_model_dir)])
    assert result.exit_code == 1 and "pip install -e '.[serve]'" in result.output


def test_client_errors_are_one_line(tmp_path):
    port = free_ports(1)[0]
    (tmp_path / "a.png").write_bytes(b"")
    result = CliRunner().invoke(cli, ["predict", str(tmp_path / "a.png"), "--server", f"localhost:{port}"])
    assert result.exit_code == 1 and f"no Triton server answers at http://localhost:{port}" in result.output
    result = CliRunner().invoke(cli, ["predict", str(tmp_path / "a.png"), "--server", "ftp://x", "--name", "m"])
    assert result.exit_code == 1 and "scheme must be http, https or grpc" in result.output
    result = CliRunner().invoke(cli, ["predict", str(tmp_path / "a.png"), "--server", "localhost:1",
                                      "--backend", "onnxruntime"])
    assert result.exit_code == 2 and "--backend choose a local model" in result.output
    result = CliRunner().invoke(cli, ["load-test", "http://10.0.0.1:8000", "--name", "m"])
    assert result.exit_code == 1 and "only runs against a server on this machine" in result.output
    # The load test and the in-process benchmark are two verbs: neither takes the other's options.
    result = CliRunner().invoke(cli, ["load-test", "localhost:1", "--threads", "2"])
    assert result.exit_code == 2 and "No such option" in result.output and "--threads" in result.output
    result = CliRunner().invoke(cli, ["bench", "runs/x", "--concurrency", "4", "--requests", "9"])
    assert result.exit_code == 2 and "No such option" in result.output and "--concurrency" in result.output
    result = CliRunner().invoke(cli, ["predict", "runs/x", str(tmp_path / "a.png"), "--name", "m"])
    assert result.exit_code == 2 and "--name names a served model: add --server URL" in result.output


def test_a_port_left_in_time_wait_by_a_stopped_server_is_free():
    """A server that stopped a moment ago leaves its port in TIME_WAIT: serving again on it must work."""
    from fastcifar.serve.triton_server import check_ports

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers (Triton's HTTP and gRPC) bind
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server side closes first: its port goes to TIME_WAIT
    client.close()
    listener.close()
    check_ports("127.0.0.1", {"http": port})


def test_server_url_model_name_and_library_path():
    from fastcifar.serve.triton_client import parse_server_url
    from fastcifar.models import model_name as default_model_name
    from fastcifar.serve.triton_server import library_path

    assert str(parse_server_url("localhost")) == "http://localhost:8000"
    assert str(parse_server_url("grpc://h:9001")) == "grpc://h:9001"
    assert parse_server_url("https://h").ssl and parse_server_url("127.0.0.5:1").is_loopback()
    assert default_model_name("runs/resnet18 imagenet") == "resnet18-imagenet"
    assert default_model_name("runs/r18/best.safetensors") == "r18-best"
    assert default_model_name("exported/r18-fp16.onnx") == "r18-fp16"
    import sysconfig

    libdir = sysconfig.get_config_var("LIBDIR")
    if (Path(libdir) / sysconfig.get_config_var("LDLIBRARY")).exists():  # a shared-library Python
        assert library_path("/x:" + libdir).split(":") == [libdir, "/x"]
        assert library_path(None) == libdir


def test_read_counters_sums_one_models_versions(monkeypatch):
    import io
    import urllib.request

    from fastcifar.bench import load_test

    text = ('nv_inference_count{model="r18",version="1"} 30\nnv_inference_count{model="r18",version="2"} 10\n'
            'nv_inference_exec_count{model="r18",version="1"} 4\nnv_inference_count{model="other",version="1"} 99\n'
            '# HELP nv_inference_exec_count x\n')
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: io.BytesIO(text.encode()))
    assert load_test.read_counters("http://x/metrics", "r18") == {"images": 40.0, "executions": 4.0}
