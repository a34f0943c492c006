"""A Triton Inference Server as a fastcifar `Predictor` (`TritonPredictor`): `fastcifar predict --server URL` and the
load test talk to a server through it.

Owns parsing the server URL (`parse_server_url`: http(s)://, grpc:// or host:port), choosing the model (the one
named, else the one `fastcifar serve` names in its server metadata, else the only one listed) and reading its
contract from its config (input, output, `max_batch_size`, the fastcifar metadata), the same against `fastcifar
serve` and a Triton serving `export --triton-repo`'s repository. Needs tritonclient (the `serve` extra).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np

from fastcifar.errors import FastCifarError
from fastcifar.preprocess import decode_metadata
from fastcifar.serve.base import Predictor
from fastcifar.serve.triton_server import DEFAULT_PORTS, SERVER_ID_PREFIX

PROTOCOLS = {"http": "http", "https": "http", "grpc": "grpc"}
LOOPBACK = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class ServerURL:
    protocol: str  # http | grpc
    host: str
    port: int
    ssl: bool = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{'https' if self.ssl else self.protocol}://{self.address}"

    def is_loopback(self) -> bool:
        return self.host in LOOPBACK or self.host.startswith("127.")


def parse_server_url(url: str) -> ServerURL:
    """http://host:port | https://host:port | grpc://host:port | host:port (HTTP) | host (HTTP, port 8000)."""
    text = str(url).strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in PROTOCOLS:
        raise FastCifarError(f"--server {url}: the scheme must be http, https or grpc")
    protocol = PROTOCOLS[parts.scheme]
    try:
        port = parts.port or DEFAULT_PORTS[protocol]
    except ValueError:
        raise FastCifarError(f"--server {url}: the port is not a number from 1 to 65535") from None
    if not parts.hostname or parts.path not in ("", "/"):
        raise FastCifarError(f"--server {url}: expected [http://|grpc://]HOST[:PORT], e.g. localhost:8000")
    return ServerURL(protocol, parts.hostname, port, ssl=parts.scheme == "https")


def _modules(protocol: str):
    try:
        if protocol == "grpc":
            import tritonclient.grpc as client
        else:
            import tritonclient.http as client
        from tritonclient.utils import InferenceServerException
    except ImportError as exc:
        from fastcifar.extras import install_command

        raise FastCifarError(f"talking to a Triton server needs tritonclient ({exc.name or exc} is missing): "
                             f"{install_command('serve')}") from None
    return client, InferenceServerException


def connect(url: ServerURL, timeout_s: float = 30.0):
    """(a live client for `url`, its module, its error type, the server's metadata); one message when nothing
    answers there, or something that is not Triton (a metrics port, another web server) does."""
    client_mod, error = _modules(url.protocol)
    try:
        if url.protocol == "grpc":
            client = client_mod.InferenceServerClient(url.address, ssl=url.ssl)
        else:
            client = client_mod.InferenceServerClient(url.address, ssl=url.ssl, connection_timeout=timeout_s,
                                                      network_timeout=timeout_s)
        live = client.is_server_live()
    except Exception as exc:  # noqa: BLE001 - connection refused / DNS / TLS: the server is not there
        raise FastCifarError(f"no Triton server answers at {url} ({_reason(exc)}): start one with fastcifar serve "
                             "MODEL, or check the server URL") from None
    try:
        meta = client.get_server_metadata(as_json=True) if url.protocol == "grpc" else client.get_server_metadata()
    except Exception as exc:  # noqa: BLE001 - an HTTP server that is not Triton answers with something else
        meta = {"error": _reason(exc)}
    if not isinstance(meta, dict) or "version" not in meta:
        why = meta.get("error") if isinstance(meta, dict) and meta.get("error") else "no server metadata"
        raise FastCifarError(f"{url} answers, but not as a Triton server ({why}): give the HTTP or gRPC port that "
                             "fastcifar serve prints, not its metrics port")
    if not live:
        raise FastCifarError(f"the Triton server at {url} is not live")
    return client, client_mod, error, meta


def _reason(exc: Exception) -> str:
    text = str(getattr(exc, "message", lambda: None)() if callable(getattr(exc, "message", None)) else exc)
    return (text or type(exc).__name__).splitlines()[0][:200]


def _config(client, protocol: str, name: str) -> dict:
    config = client.get_model_config(name, as_json=True) if protocol == "grpc" else client.get_model_config(name)
    return config.get("config", config)  # gRPC wraps it in {"config": ...}


def choose_model(client, url: ServerURL, name: str | None, server_meta: dict | None = None) -> str:
    """The model to ask: `name`, else the model a `fastcifar serve` names in its metadata, else the only ready model
    the server lists."""
    if name:
        if not client.is_model_ready(name):
            names = sorted({m["name"] for m in _index(client, url) or []})
            raise FastCifarError(f"the Triton server at {url} has no ready model '{name}'"
                                 + (f" (it has: {', '.join(names)})" if names else ""))
        return name
    served = str((server_meta or {}).get("name", ""))
    if served.startswith(SERVER_ID_PREFIX) and client.is_model_ready(served[len(SERVER_ID_PREFIX):]):
        return served[len(SERVER_ID_PREFIX):]  # fastcifar serve says which model it serves
    models = _index(client, url)
    if models is None:
        raise FastCifarError(f"the Triton server at {url} does not list its models: name one (predict --name NAME, "
                             "load-test --name NAME; fastcifar serve prints it)")
    ready = sorted({m["name"] for m in models if m.get("state", "READY") == "READY"})
    if len(ready) != 1:
        raise FastCifarError(f"the Triton server at {url} has {len(ready)} ready models"
                             + (f" ({', '.join(ready)})" if ready else "")
                             + ": name one (predict --name NAME, load-test --name NAME)")
    return ready[0]


def _index(client, url: ServerURL) -> list[dict] | None:
    """The server's model repository index; None when it is not listable (PyTriton guards it with a token)."""
    try:
        index = client.get_model_repository_index(as_json=True) if url.protocol == "grpc" else \
            client.get_model_repository_index()
    except Exception:  # noqa: BLE001 - refused (token) or not supported: the caller says what to do instead
        return None
    return index.get("models", []) if isinstance(index, dict) else index


def _parameters(config: dict) -> dict:
    """The fastcifar metadata in a config's parameters, decoded as an ONNX file's is (preprocess.decode_metadata:
    export/triton.py writes the same keys and values)."""
    return decode_metadata({key: value.get("string_value", "") if isinstance(value, dict) else str(value)
                            for key, value in (config.get("parameters") or {}).items()})


class TritonPredictor(Predictor):
    """A model on a Triton server, behind the same uint8 pixels-in contract as the local predictors."""

    backend = "triton"
    timing = "wall"

    def __init__(self, url: str, name: str | None = None, *, timeout_s: float = 30.0):
        self.url = parse_server_url(url)
        self.client, self._mod, self._error, server_meta = connect(self.url, timeout_s)
        self.name = choose_model(self.client, self.url, name, server_meta)
        try:
            config = _config(self.client, self.url.protocol, self.name)
        except Exception as exc:  # noqa: BLE001 - refused or unreadable: one message, not the client's traceback
            raise FastCifarError(f"the Triton server at {url} did not give the config of model '{self.name}' "
                                 f"({_reason(exc)})") from None
        inputs, outputs = config.get("input") or [], config.get("output") or []
        if len(inputs) != 1 or len(outputs) != 1:
            raise FastCifarError(f"model '{self.name}' at {self.url} has {len(inputs)} inputs and {len(outputs)} "
                                 "outputs; fastcifar's models have one of each")
        self.input_name, self.output_name = inputs[0]["name"], outputs[0]["name"]
        dims = [int(d) for d in inputs[0].get("dims", [])]
        if inputs[0].get("data_type") != "TYPE_UINT8" or len(dims) != 3 or dims[2] != 3 or dims[0] != dims[1]:
            raise FastCifarError(f"model '{self.name}' at {self.url} takes {inputs[0].get('data_type')} {dims}; "
                                 "predict sends uint8 images [S, S, 3] (serve a raw-input model: fastcifar serve, "
                                 "or export --input raw)")
        try:
            meta = _parameters(config)
        except ValueError as exc:  # a JSON value (class names, mean, ...) that is not JSON
            raise FastCifarError(f"model '{self.name}' at {self.url} carries unreadable fastcifar metadata in its "
                                 f"config ({exc})") from None
        classes = int((outputs[0].get("dims") or [0])[-1])
        names = meta.get("class_names") or [str(i) for i in range(classes)]
        spec = {**meta, "class_names": names, "input_size": dims[0],
                "image_size": meta.get("image_size") or dims[0]}
        super().__init__(spec, artifact=f"{self.url}/{self.name}")
        self.max_batch = int(config.get("max_batch_size") or 1)
        self.precision = str(meta.get("precision") or "unknown")
        self.device = str(self.url)
        self.config = config

    def to_input(self, pixels: np.ndarray) -> np.ndarray:
        return pixels

    def run(self, inputs: np.ndarray) -> np.ndarray:
        request = self._mod.InferInput(self.input_name, list(inputs.shape), "UINT8")
        request.set_data_from_numpy(inputs)
        wanted = [self._mod.InferRequestedOutput(self.output_name)]
        try:
            result = self.client.infer(self.name, [request], outputs=wanted)
        except self._error as exc:
            raise FastCifarError(f"the server refused the request: {_reason(exc)}") from None
        except Exception as exc:  # noqa: BLE001 - the HTTP client passes socket errors and timeouts through
            raise FastCifarError(f"the request to {self.url} failed ({type(exc).__name__}: {_reason(exc)})") from None
        return result.as_numpy(self.output_name)

    def to_numpy(self, outputs: np.ndarray) -> np.ndarray:
        return np.asarray(outputs, np.float32)

    def describe(self) -> dict:
        return {**super().describe(), "server": str(self.url), "model": self.name}

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a client that lost its server
            pass
