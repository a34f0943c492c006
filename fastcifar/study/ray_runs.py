"""A compare's runs as Ray tasks (`compare --ray [ADDRESS]`): every training run and every robustness evaluation is a
task with its own resource request, scheduled by Ray over the GPUs (or CPUs) of one machine or a cluster.

Owns `RayOptions` and `RayRuns` (compare.py's other runner beside LocalRuns): starting a local Ray on 127.0.0.1 or
joining a cluster, the tasks, progress (runs done / running where / waiting), Ray's retries of a lost worker (the
retry resumes the run's saved state where the report directory is shared, else starts it over) and Ctrl-C (the
tasks are cancelled; a Ray this process started is shut down). A task returns its run's records, so the report is
built on the driver even where workers share no filesystem. Needs the `ray` extra. `isolated_env`: a throwaway Ray's
environment for scripts and tests.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fastcifar.errors import FastCifarError
from fastcifar.extras import install_command
from fastcifar.rundir import RunDir, read_summary, run_state
from fastcifar.study.run_plan import PlannedRun

RAY_EXTRA = install_command("ray")
LOCAL = ("", "auto", "local")  # --ray with no address, or these: a Ray of its own on this machine


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None or LOCAL: start a local Ray on node_ip; else join the cluster there
    gpus_per_run: float | None = None  # None: 1 where the driver sees CUDA, else 0 (a fraction packs small runs)
    cpus_per_run: float = 1.0  # each task's CPU request, and its torch threads
    node_ip: str = "127.0.0.1"  # where a local Ray listens (nothing leaves the loopback)
    max_retries: int = 3  # Ray's retries of a task whose worker process died
    num_cpus: int | None = None  # a local Ray's CPUs (None: the machine's)


def _on_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _keep_on_loopback() -> None:
    """Ray swaps a loopback node IP for the machine's external one and binds its servers to every interface, unless it
    believes it runs on a laptop: that switch (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read when ray is imported, and by
    the processes it starts) keeps a Ray on 127.0.0.1, every port it opens included. Measured with Ray 2.60."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:  # ray was imported before: the constant is already read
        constants.ENABLE_RAY_CLUSTER = False


def isolated_env(temp: Path) -> dict[str, str]:
    """The environment of a throwaway Ray for scripts and tests (bench/ray_overhead.py, tests/test_ray.py): on the
    loopback only (_keep_on_loopback), its files under `temp` and a token of its own in `temp`/token (the caller
    writes it), nothing in ~/.ray or /tmp/ray, no usage stats. Set before ray is imported: it reads them then."""
    return {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_TMPDIR": str(temp), "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(temp / "token"), "RAY_USAGE_STATS_ENABLED": "0"}


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """One message when nothing listens at a cluster's HOST:PORT (or ray://HOST:PORT): ray.init would retry its
    connection for minutes before it gives up."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return  # not a form this can check: Ray's own message then
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise FastCifarError(f"compare --ray: nothing answers at {address} ({exc.strerror or exc}). Start the "
                             f"cluster's head there first (ray start --head --port {port}), or check the "
                             "address") from None


def _raising_signals(call, *args, **kwargs):
    """`call(*args, **kwargs)` (ray.wait, ray.get), with an exception that a Python signal handler raised during it
    coming out as itself. Ray's blocking calls run the driver's signal handlers while they wait, but turn only
    KeyboardInterrupt and SystemExit into errors of their own: any other exception a handler raises (pytest-timeout's
    on SIGALRM, a caller's own deadline) leaves the call returning with that exception set, which Python reports as
    `SystemError: <cyfunction CoreWorker.wait> returned a result with an exception set` (reproduced with Ray 2.60:
    tests/test_ray.py). That SystemError is an Exception, so CliRunner and the status line's `except Exception` took
    it for a failure of the study - or swallowed it - and what really stopped the wait was lost."""
    try:
        return call(*args, **kwargs)
    except SystemError as exc:
        if exc.__cause__ is None or "returned a result with an exception set" not in str(exc):
            raise
        raise exc.__cause__.with_traceback(exc.__cause__.__traceback__) from None


def _require_ray():
    try:
        import ray
    except ImportError:
        raise FastCifarError(f"compare --ray needs Ray: {RAY_EXTRA}") from None
    return ray


# ---------------------------------------------------------------------------------------------- the tasks


def train_task(cfg_dict: dict, threads: int, board) -> dict:
    """Train (or resume, or keep) one planned run where Ray placed it; returns its records and where it ran."""
    import torch

    from fastcifar.config import TrainConfig
    from fastcifar.study.one_run import train_or_resume

    torch.set_num_threads(max(1, threads))
    cfg = TrainConfig.from_dict(cfg_dict)
    run_dir = Path(cfg.out)
    where = _where()
    board.started.remote(_label(run_dir.name, "train"), where["host"])
    state = run_state(run_dir)  # as this node sees it: a retried task finds its own saved state here
    if state != "finished":
        train_or_resume(cfg, state)
    return {"files": RunDir(run_dir).small_files(), **where}


def evaluate_task(run_dir: str, test, device: str, severities: tuple[int, ...], threads: int, board) -> dict:
    import torch

    from fastcifar.study.one_run import ensure_robustness

    torch.set_num_threads(max(1, threads))
    where = _where()
    board.started.remote(_label(Path(run_dir).name, "robustness"), where["host"])
    return {"robustness": ensure_robustness(Path(run_dir), test, device, lambda message: None, severities),
            **where}


def _label(name: str, kind: str) -> str:
    """What the status line calls a task: the run's name, with what an evaluation task does."""
    return name if kind == "train" else f"{name} ({kind})"


def _absolute(cfg):
    """The run's paths as absolute paths: a Ray worker's working directory is not the driver's."""
    from dataclasses import replace

    return replace(cfg, out=str(Path(cfg.out).resolve()),
                   tensorboard_dir=str(Path(cfg.tensorboard_dir).resolve()) if cfg.tensorboard_dir else None)


def _where() -> dict:
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "host": f"{socket.gethostname()}:{os.getpid()}"}


class _Board:
    """Which task started where: the driver's view of what runs (tasks report when they start)."""

    def __init__(self):
        self.running: dict[str, str] = {}

    def started(self, name: str, host: str) -> None:
        self.running[name] = host

    def snapshot(self) -> dict:
        return dict(self.running)


# ---------------------------------------------------------------------------------------------- the runner


def _check_fits(nodes: list[dict], cpus: float, gpus: float) -> None:
    """A task no node can hold would wait forever: say so now."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
    if not any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in alive):
        most = max(((r.get("CPU", 0), r.get("GPU", 0)) for r in alive), default=(0, 0))
        raise FastCifarError(f"no Ray node has {cpus:g} CPU(s) and {gpus:g} GPU(s) for one run (the largest has "
                             f"{most[0]:g} CPUs and {most[1]:g} GPUs): lower --cpus-per-run / --gpus-per-run")


class RayRuns:
    """compare's runner on Ray: `train(runs, states)` and `evaluate(runs, ...)` block until their tasks are done."""

    def __init__(self, options: RayOptions, display, out: Path):
        self.options, self.display, self.out = options, display, out
        self.nodes: dict[str, str] = {}  # run name -> the node that trained it (its weights are there)

    def __enter__(self):
        opts = self.options
        local = opts.address in (None, *LOCAL)
        if _on_loopback(opts.node_ip if local else opts.address.rsplit(":", 1)[0].strip("[]")):
            _keep_on_loopback()
        ray = _require_ray()
        try:
            if local:
                self.display.log(f"compare: starting a local Ray on {opts.node_ip}")
                ray.init(_node_ip_address=opts.node_ip, include_dashboard=False, num_cpus=opts.num_cpus,
                         log_to_driver=False, configure_logging=False)
            else:
                _check_reachable(opts.address)
                ray.init(address=opts.address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            what = "start a local Ray" if local else f"connect to the Ray cluster at {opts.address}"
            raise FastCifarError(f"compare --ray: could not {what}: {str(exc).splitlines()[0][:300]}") from None
        try:
            self._prepare(ray)
        except BaseException:
            ray.shutdown()
            raise
        return self

    def _prepare(self, ray) -> None:
        opts = self.options
        resources = ray.cluster_resources()
        gpus = opts.gpus_per_run if opts.gpus_per_run is not None else (1.0 if resources.get("GPU") else 0.0)
        _check_fits(ray.nodes(), opts.cpus_per_run, gpus)
        self.request = {"num_cpus": opts.cpus_per_run, "num_gpus": gpus, "max_retries": opts.max_retries,
                        "retry_exceptions": False}
        self.threads = max(1, int(opts.cpus_per_run))
        self.board = ray.remote(num_cpus=0)(_Board).remote()
        self.train_remote = ray.remote(train_task)
        self.evaluate_remote = ray.remote(evaluate_task)
        self.display.log(f"compare: Ray with {resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs "
                         f"on {len(ray.nodes())} node(s); each run asks for {opts.cpus_per_run:g} CPU(s) and "
                         f"{gpus:g} GPU(s)")

    def __exit__(self, *exc) -> None:
        import ray

        ray.shutdown()  # stops a Ray this process started; disconnects from a cluster

    def train(self, runs: list[PlannedRun], states: dict) -> None:
        todo = [run for run in runs if states[run.name] != "finished"]
        refs = {self.train_remote.options(**self.request).remote(_absolute(run.cfg).to_dict(), self.threads,
                                                                 self.board): run for run in todo}
        for run, result in self._wait(refs, "train"):
            RunDir(run.run_dir).write_files(result["files"])  # the driver's copy of the records
            self.nodes[run.name] = result["node_id"]
            summary = read_summary(run.run_dir)
            self.display.remote_done(run, summary, result["host"])

    def evaluate(self, runs: list[PlannedRun], test, device: str, severities: tuple[int, ...]) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        todo = [run for run in runs if RunDir(run.run_dir).read_robustness() is None]
        if not todo:
            return
        test_ref = ray.put(test)
        refs = {}
        for run in todo:  # where the run's weights are: the node that trained it, when this invocation knows it
            node = self.nodes.get(run.name)
            strategy = NodeAffinitySchedulingStrategy(node, soft=True) if node else "DEFAULT"
            refs[self.evaluate_remote.options(**self.request, scheduling_strategy=strategy).remote(
                str(Path(run.run_dir).resolve()), test_ref, device, severities, self.threads, self.board)] = run
        self.display.log(f"compare: evaluating {len(todo)} final model(s) on Ray")
        for run, result in self._wait(refs, "robustness"):
            RunDir(run.run_dir).write_robustness(result["robustness"])

    def _wait(self, refs: dict, kind: str):
        """(run, result) as each task ends, with a status line whenever done / running / waiting changes. A task that
        failed is one message naming its run; whatever ends the wait early (that, Ctrl-C) cancels the tasks left, so
        none keeps a cluster's GPUs busy for a study that stopped."""
        import ray
        from ray.exceptions import RayError, RayTaskError

        pending, done, last = dict(refs), 0, None
        try:
            while pending:
                ready, _ = _raising_signals(ray.wait, list(pending), num_returns=1, timeout=2.0)
                status = self._status(pending, done, kind)
                if status != last:
                    self.display.log(f"{status} [{time.strftime('%H:%M:%S')}]")
                    last = status
                for ref in ready:
                    run = pending.pop(ref)
                    try:
                        result = _raising_signals(ray.get, ref)
                    except RayTaskError as exc:
                        cause = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else exc
                        code = getattr(cause, "exit_code", 1)
                        raise FastCifarError(f"{run.name}: {cause}", exit_code=code) from None
                    except RayError as exc:
                        raise FastCifarError(f"{run.name}: Ray could not run it ({type(exc).__name__}: "
                                             f"{str(exc).splitlines()[0][:300]})") from None
                    done += 1
                    yield run, result
        except KeyboardInterrupt:
            raise FastCifarError(f"interrupted; the Ray tasks were cancelled and every finished run is kept. Rerun "
                                 f"the same command (--out {self.out}) to continue.", exit_code=130) from None
        finally:
            for ref in pending:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - a task that ended meanwhile, or a Ray already gone
                    pass

    def _status(self, pending: dict, done: int, kind: str) -> str:
        import ray
        from ray.exceptions import RayError

        try:
            started = _raising_signals(ray.get, self.board.snapshot.remote(), timeout=5)
        except RayError:  # a slow or lost board (GetTimeoutError is one): a status line is not worth failing for;
            started = {}  # anything else (a signal handler's exception) stops the wait as it would anywhere
        names = {_label(run.name, kind) for run in pending.values()}
        running = {n: h for n, h in started.items() if n in names}
        where = ", ".join(f"{n} on {h}" for n, h in sorted(running.items())) or "-"
        return f"ray: {done} done, {len(running)} running ({where}), {len(names) - len(running)} waiting"
