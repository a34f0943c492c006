"""A recipe sweep in one process, planned to fit a time budget: which recipe reaches 94 % on CIFAR-10, and why.

A plan (JSON; bench/plans/gpu.json is the GPU check's) lists stages in the order the next decision needs them:
    {"target": 0.94, "preset": "fast",
     "accuracy_set": {"compile": false},          # accuracy runs are eager: no compile stalls, no recompiles
     "cost_s": {"eager": 22, "compiled": 45},     # per-run seconds until this machine has measured its own
     "stages": [
       {"stage": "candidate", "seeds": 1, "variants": [{"name": "all-levers", "set": {...}}]},
       {"stage": "levers", "seeds": 1, "variants": [{"name": "fast", "set": {}}, {"name": "ema", "set": {...}}]},
       {"stage": "seeds-of-best", "seeds": 3},    # seeds 0..2 of the best variant of the stages before
       {"stage": "timed", "seeds": 1, "set": {"compile": true}}]}   # the best, compiled: time to target
A "listed" stage runs its variants as they are (`preset` per variant allowed). `set` holds TrainConfig overrides.
A run is planned while its estimated cost fits --budget-s, and a (variant, seed) already in --jsonl or a --previous
file with the same recipe is not run again. Each run is one JSON line at once (--epochs-jsonl: every epoch too).
Planning and the fields of a line: bench/README.md, "The recipe sweep".

    python bench/sweep.py --data-dir ~/data/cifar10 --plan bench/plans/gpu.json --jsonl sweep.jsonl
    python bench/sweep.py --data-dir D --plan P.json --jsonl s.jsonl --device cpu --set train_limit=2000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field, fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastcifar.errors import FastCifarError  # noqa: E402
from fastcifar.train.guards import PREEMPTED_EXIT  # noqa: E402

RUN_KEYS = ("seed", "test_acc", "val_acc", "train_seconds", "images_per_second", "epochs", "device", "precision",
            "compile", "compile_mode", "compile_record", "channels_last", "loader", "cudnn_benchmark",
            "compile_warmup_seconds", "state_save_seconds", "warnings", "levers", "n_train")
STAGES = ("candidate", "levers", "listed", "seeds-of-best", "timed")
BEST_OF = ("candidate", "levers", "listed")  # the stages whose variants compete for "best"
DEFAULT_COST_S = {"eager": 30.0, "compiled": 60.0}


class SweepStopped(Exception):
    """SIGTERM stopped a run (it saved its state): the sweep stops and exits 143, as the run would alone."""


# ---------------------------------------------------------------------------------------------- the plan

@dataclass(frozen=True)
class Variant:
    name: str
    preset: str | None
    set: dict
    stage: str


@dataclass(frozen=True)
class Run:
    """One planned training: a variant and a seed, plus the stage's own overrides (the timed stage's compile)."""
    stage: str
    seed: int
    variant: Variant
    extra: dict = field(default_factory=dict)

    @property
    def compiled(self) -> bool:
        return bool(self.extra.get("compile", False))


@dataclass
class Plan:
    target: float
    preset: str | None
    accuracy_set: dict
    cost_s: dict
    stages: list[dict]  # each: {"stage", "seeds", "variants": [Variant], "set"}

    def variants(self) -> list[Variant]:
        return [v for s in self.stages for v in s["variants"]]


def parse_overrides(pairs: list[str]) -> dict:
    """`--set lr=0.2 --set zero_init_residual=false` -> TrainConfig overrides, typed like the field."""
    from fastcifar.config import TrainConfig

    types = {f.name: str(f.type) for f in fields(TrainConfig)}
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in types:
            raise FastCifarError(f"--set takes KEY=VALUE with a TrainConfig field as KEY, got '{pair}'")
        kind = types[key]
        try:
            if text.lower() in ("none", "null"):
                out[key] = None
            elif "bool" in kind:
                out[key] = text.lower() in ("1", "true", "yes", "on")
            elif "int" in kind:
                out[key] = int(text)
            elif "float" in kind:
                out[key] = float(text)
            else:
                out[key] = text
        except ValueError:
            raise FastCifarError(f"--set {key}: '{text}' is not a valid {kind}") from None
    return out


def load_plan(path: Path, base: dict | None = None) -> Plan:
    """A plan file, every variant checked up front (a name, known stages, a config TrainConfig accepts with the
    sweep's own overrides), so a bad value is one message before anything trains, not a failure an hour in."""
    try:
        spec = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise FastCifarError(f"cannot read the plan {path}: {exc}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("stages"), list) or not spec["stages"]:
        raise FastCifarError(f"{path} needs a non-empty 'stages' list (bench/sweep.py's docstring shows the format)")
    plan = Plan(target=float(spec.get("target", 0.94)), preset=spec.get("preset"),
                accuracy_set=dict(spec.get("accuracy_set", {})),
                cost_s={**DEFAULT_COST_S, **spec.get("cost_s", {})}, stages=[])
    names, problems = set(), []
    for i, stage in enumerate(spec["stages"]):
        kind = stage.get("stage") if isinstance(stage, dict) else None
        if kind not in STAGES:
            problems.append(f"stage {i + 1}: 'stage' must be one of {', '.join(STAGES)}, got {kind!r}")
            continue
        seeds = stage.get("seeds", 1)
        if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
            problems.append(f"stage {i + 1} ({kind}): 'seeds' must be a whole number >= 1, got {seeds!r}")
        variants = []
        for v in stage.get("variants", []):
            if not isinstance(v, dict) or not v.get("name") or not isinstance(v.get("set", {}), dict):
                problems.append(f"stage {i + 1} ({kind}): bad variant {v!r} (each needs a name and a 'set' object)")
                continue
            if v["name"] in names:
                problems.append(f"variant name '{v['name']}' is used twice")
            names.add(v["name"])
            # A competing stage's own `set` goes into each of its variants: a variant is one recipe wherever it runs.
            variants.append(Variant(v["name"], v.get("preset", plan.preset),
                                    {**stage.get("set", {}), **v.get("set", {})}, kind))
        if (kind in BEST_OF) != bool(variants):
            problems.append(f"stage {i + 1} ({kind}): " + ("needs variants" if kind in BEST_OF else
                                                             "takes no variants (it runs the best one)"))
        if kind not in BEST_OF and not any(s["stage"] in BEST_OF for s in plan.stages):
            problems.append(f"stage {i + 1} ({kind}): needs a stage with variants before it (which one is best?)")
        plan.stages.append({"stage": kind, "seeds": seeds if isinstance(seeds, int) else 1, "variants": variants,
                            "set": {} if variants else dict(stage.get("set", {}))})
    if not problems:
        for stage in plan.stages:
            for v in stage["variants"] or [Variant("(best)", plan.preset, {}, stage["stage"])]:
                try:
                    make_config(plan, v, stage["set"], base or {}, seed=0)
                except FastCifarError as exc:
                    problems.append(f"variant '{v.name}': {exc}")
    if problems:
        raise FastCifarError(f"{path}: " + "; ".join(problems))
    return plan


def single_plan(name: str, preset: str | None, overrides: dict, seeds: int, target: float) -> Plan:
    """One variant x `seeds` as a plan (bench/time_to_accuracy.py), with the device's own compile default."""
    stage = {"stage": "listed", "seeds": seeds, "variants": [Variant(name, preset, dict(overrides), "listed")],
             "set": {}}
    return Plan(target=target, preset=preset, accuracy_set={}, cost_s=dict(DEFAULT_COST_S), stages=[stage])


def make_config(plan: Plan, variant: Variant, extra: dict, base: dict, *, seed: int, out: str | None = None):
    from fastcifar.config import make_train_config

    overrides = {**plan.accuracy_set, **variant.set, **extra, **base, "seed": seed, "out": out}
    overrides.setdefault("save_state_every", 0)  # benchmark runs are never resumed: no ~90 MB write per epoch
    overrides.setdefault("save_best", False)  # nor served: no best-checkpoint write per improvement
    return make_train_config(variant.preset, overrides)


def run_name(run: Run, variant: Variant) -> str:
    """A timed run (the best variant, compiled, for time to target) is named apart from its accuracy runs."""
    return f"{variant.name}@timed" if run.stage == "timed" else variant.name


def recipe_key(plan: Plan, variant: Variant, extra: dict, base: dict) -> str:
    """12 hex digits naming what a line was trained with: the whole training config it resolves to (a preset whose
    defaults change is a new recipe), less the seed, the data's path and where the run went."""
    recipe = make_config(plan, variant, extra, base, seed=0).to_dict()
    for key in ("seed", "data_dir", "out"):
        recipe.pop(key, None)
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def best_variant(plan: Plan, lines: list[dict], base: dict) -> Variant | None:
    """The competing variant with the highest mean test accuracy among finished lines of its current recipe."""
    scores = {}
    for v in (v for v in plan.variants() if v.stage in BEST_OF):
        key = recipe_key(plan, v, {}, base)
        accs = [r["test_acc"] for r in lines if r.get("variant") == v.name and r.get("recipe") == key
                and r.get("status") == "finished" and r.get("test_acc") is not None]
        if accs:
            scores[v.name] = (statistics.mean(accs), v)
    return max(scores.values(), key=lambda s: s[0])[1] if scores else None


def estimate_cost(plan: Plan, lines: list[dict], machine: str, compiled: bool) -> float:
    """Wall seconds one run is expected to take: this machine's median so far for the mode, else the plan's."""
    mode = "compiled" if compiled else "eager"
    seen = [r["wall_seconds"] for r in lines if r.get("machine") == machine and r.get("status") == "finished"
            and bool(r.get("compile")) == compiled and r.get("wall_seconds")]
    return statistics.median(seen) if seen else float(plan.cost_s[mode])


def run_key(plan: Plan, run: Run, base: dict) -> tuple:
    """What makes two lines the same measurement: the run's name, its seed and its recipe."""
    return run_name(run, run.variant), run.seed, recipe_key(plan, run.variant, run.extra, base)


def plan_runs(plan: Plan, lines: list[dict], *, base: dict, budget_s: float | None = None, cost=None,
              machine: str = "", skip: set = frozenset()) -> list[tuple[Run, float]]:
    """The runs still to do, in stage order, each with its estimated cost, keeping to `budget_s` (None: no limit).

    `lines` are the runs so far (earlier GPU runs' included): a finished (variant, seed, recipe) there is done, and
    so is any in `skip` (what this sweep already tried: a failed run is retried by a later sweep, not in a loop).
    The best variant (seeds-of-best, timed) is decided from the finished lines; before any exists it is the first
    competing variant (the candidate), and the plan is redone after every run anyway."""
    cost = cost or (lambda run: estimate_cost(plan, lines, machine, run.compiled))
    done = {(r.get("variant"), r.get("seed"), r.get("recipe")) for r in lines if r.get("status") == "finished"}
    done |= set(skip)
    best = best_variant(plan, lines, base) or next(v for v in plan.variants() if v.stage in BEST_OF)
    planned, left = [], budget_s
    for stage in plan.stages:
        for seed in range(stage["seeds"]):
            for variant in stage["variants"] or [best]:
                run = Run(stage["stage"], seed, variant, dict(stage["set"]))
                key = run_key(plan, run, base)
                if key in done:
                    continue
                done.add(key)  # planned once, even when a later stage asks for the same run
                seconds = cost(run)
                if left is not None and seconds > left:
                    continue  # too long for what is left: a cheaper run further down may still fit
                planned.append((run, seconds))
                if left is not None:
                    left -= seconds
    return planned


# ---------------------------------------------------------------------------------------------- running

def run_one(plan: Plan, run: Run, *, base: dict, runs_dir: Path, dataset, machine: str,
            epochs_jsonl: Path | None = None) -> dict:
    """Train one planned run and return its JSON line. Any error in the run (a diverged recipe, a module the machine
    lacks, CUDA out of memory) becomes a 'failed' line: the sweep goes on with the next run."""
    import shutil

    from fastcifar.fileio import append_jsonl

    variant = run.variant
    name = run_name(run, variant)
    out = runs_dir / name / f"seed{run.seed}"
    if out.exists():  # what an earlier, cut or failed attempt left: sweep runs keep no state to resume from
        shutil.rmtree(out)
    line = {"variant": name, "stage": run.stage, "preset": variant.preset,
            "set": {**plan.accuracy_set, **variant.set, **run.extra}, "seed": run.seed, "target": plan.target,
            "machine": machine, "recipe": recipe_key(plan, variant, run.extra, base)}

    def on_epoch(epoch: int, metrics: dict) -> None:
        if epochs_jsonl is not None:
            append_jsonl(epochs_jsonl, {"variant": name, "seed": run.seed, "recipe": line["recipe"],
                                        "machine": machine, "epoch": epoch, **{k: metrics.get(k) for k in (
                                            "train_loss", "val_acc", "test_acc", "elapsed_train_seconds",
                                            "images_per_second")}})

    start = time.perf_counter()
    try:
        from fastcifar.rundir import read_metrics
        from fastcifar.train.loop import train

        cfg = make_config(plan, variant, run.extra, base, seed=run.seed, out=str(out))
        result = train(cfg, progress="bar" if sys.stderr.isatty() else "lines", dataset=dataset,
                       on_epoch_end=on_epoch)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever one run hits is recorded; the next run still runs
        if getattr(exc, "exit_code", None) == 130:  # Ctrl-C inside the run: stop the sweep, not just this run
            raise KeyboardInterrupt from None
        if getattr(exc, "exit_code", None) == PREEMPTED_EXIT:  # SIGTERM (the GPU check's step limit, a scheduler):
            raise SweepStopped from None  # the sweep stops too; this run is not a failed one
        traceback.print_exc(file=sys.stderr)
        return {**line, "status": "failed", "error": f"{type(exc).__name__}: {exc}"[:500],
                "wall_seconds": time.perf_counter() - start}
    s = result.summary
    metrics = read_metrics(result.run_dir)
    line.update({k: s.get(k) for k in RUN_KEYS})
    line.update(status="finished", batch_size=cfg.batch_size, lr=cfg.lr,
                seconds_to_target=seconds_to_target(metrics, plan.target),
                epoch1_train_loss=metrics[0]["train_loss"],
                epoch1_train_loss_second_half=metrics[0].get("train_loss_second_half"), test_acc_per_epoch=[m.get("test_acc") for m in metrics],
                wall_seconds=time.perf_counter() - start, run_dir=str(result.run_dir))
    return line


def seconds_to_target(metrics: list[dict], target: float) -> float | None:
    """Training seconds at the end of the first epoch whose test accuracy reached `target` (None: never)."""
    return next((m["elapsed_train_seconds"] for m in metrics
                 if m.get("test_acc") is not None and m["test_acc"] >= target), None)


def machine_name() -> str:
    from fastcifar.runtime import env_info

    env = env_info()
    return env["gpus"][0]["name"] if env["gpus"] else f"CPU ({env['cpu_count']} cores)"


def run_sweep(plan: Plan, *, data_dir: str, jsonl: Path, device: str = "auto", base_overrides: dict | None = None,
              previous: list[Path] = (), runs_dir: Path | None = None, budget_s: float | None = None,
              epochs_jsonl: Path | None = None,
              log=lambda message: print(message, file=sys.stderr, flush=True)) -> list[dict]:
    """Run the plan's runs not done in `jsonl` or `previous`, re-planning after each; returns every line of
    `jsonl` and `previous` that belongs to the plan's current recipes."""
    from fastcifar.fileio import append_jsonl, read_jsonl

    base = {**(base_overrides or {}), "data_dir": data_dir, "device": device, "download": False}
    earlier = [r for p in previous for r in read_jsonl(p)]
    machine = machine_name()
    deadline = None if budget_s is None else time.monotonic() + budget_s
    dataset, tried = None, set()
    with tempfile.TemporaryDirectory() as tmp:
        where = runs_dir or Path(tmp)
        while True:
            lines = earlier + read_jsonl(jsonl)
            left = None if deadline is None else deadline - time.monotonic()
            todo = plan_runs(plan, lines, base=base, budget_s=left, machine=machine, skip=tried)
            if not todo:
                break
            run, seconds = todo[0]
            tried.add(run_key(plan, run, base))
            if dataset is None:
                from fastcifar.data.datasets import load_dataset

                dataset = load_dataset(data_dir, "auto", download=False, progress=False)  # read once for every run
                log(f"sweep: {len(todo)} run(s) planned ({sum(c for _, c in todo):.0f} s estimated"
                    + ("" if left is None else f" of {left:.0f} s left") + f"); {machine}")
            log(f"sweep: run {len(tried)} ({run.stage}): {run_name(run, run.variant)} seed {run.seed}, "
                f"~{seconds:.0f} s")
            line = run_one(plan, run, base=base, runs_dir=where, dataset=dataset, machine=machine,
                           epochs_jsonl=epochs_jsonl)
            append_jsonl(jsonl, line)
            acc = f"failed ({line['error'][:120]})" if line["status"] != "finished" else f"{100 * line['test_acc']:.2f} %"
            log(f"sweep: {line['variant']} seed {run.seed}: {acc} in {line['wall_seconds']:.0f} s")
        if deadline is not None:
            rest = plan_runs(plan, earlier + read_jsonl(jsonl), base=base, machine=machine, skip=tried)
            if rest:
                log(f"sweep: {len(rest)} planned run(s) did not fit the budget "
                    f"({max(deadline - time.monotonic(), 0):.0f} s left); the next sweep of this plan starts there")
    competing = [v for v in plan.variants() if v.stage in BEST_OF]
    keys = {(run_name(r, r.variant), recipe_key(plan, r.variant, r.extra, base))
            for s in plan.stages for r in (Run(s["stage"], 0, v, s["set"]) for v in s["variants"] or competing)}
    return [r for r in earlier + read_jsonl(jsonl) if (r.get("variant"), r.get("recipe")) in keys]


# ---------------------------------------------------------------------------------------------- the table

def spread(values: list) -> dict:
    values = [v for v in values if v is not None]
    return {"mean": statistics.mean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}


def pm(s: dict, scale: float = 1.0, digits: int = 2) -> str:
    if s["mean"] is None:
        return "-"
    return f"{scale * s['mean']:.{digits}f}" + ("" if s["std"] is None else f" ± {scale * s['std']:.{digits}f}")


def summarize(lines: list[dict]) -> list[dict]:
    """Per variant, in first-seen order: accuracy per seed and mean ± std, seconds, time to target, compile."""
    latest = {(line["variant"], line["seed"]): line for line in lines}  # a retried pair counts once: its last line
    out: dict[str, dict] = {}
    for line in latest.values():
        v = out.setdefault(line["variant"], {"variant": line["variant"], "set": line.get("set", {}), "runs": []})
        v["runs"].append(line)
    for v in out.values():
        done = [r for r in v["runs"] if r.get("status") == "finished"]
        records = [r.get("compile_record") or {} for r in done]
        v.update(finished=len(done), failed=len(v["runs"]) - len(done),
                 test_acc_per_seed={r["seed"]: r["test_acc"] for r in done},
                 test_acc=spread([r["test_acc"] for r in done]),
                 train_seconds=spread([r["train_seconds"] for r in done]),
                 seconds_to_target=spread([r["seconds_to_target"] for r in done]),
                 reached_target=sum(r["seconds_to_target"] is not None for r in done),
                 epoch1_train_loss=[r.get("epoch1_train_loss_second_half", r["epoch1_train_loss"]) for r in done],
                 compiled=sorted({bool(r.get("compile")) for r in done}),
                 graphs=[rec.get("graphs") for rec in records if rec],
                 recompile_limit_hit=any(rec.get("recompile_limit_hit") for rec in records),
                 errors=[r.get("error") for r in v["runs"] if r.get("status") != "finished"])
        del v["runs"]
    return list(out.values())


def markdown(summary: list[dict], target: float) -> str:
    rows = ["| variant | runs | test acc % (mean ± std) | per seed | training s | "
            f"reached {100 * target:g} % | s to {100 * target:g} % | epoch-1 loss (2nd half) | compiled |",
            "|---|---:|---:|---|---:|---:|---:|---|---|"]
    for v in summary:
        seeds = ", ".join(f"{s}: {100 * a:.2f}" for s, a in v["test_acc_per_seed"].items())
        failed = f" ({v['failed']} failed)" if v["failed"] else ""
        mode = "/".join("compiled" if c else "eager" for c in v.get("compiled", [])) or "-"
        if v.get("graphs"):
            mode += f" ({', '.join(str(g) for g in v['graphs'])} graphs"
            mode += ", HIT THE RECOMPILE LIMIT)" if v.get("recompile_limit_hit") else ")"
        rows.append(f"| {v['variant']} | {v['finished']}{failed} | {pm(v['test_acc'], 100)} | {seeds} | "
                    f"{pm(v['train_seconds'], digits=1)} | {v['reached_target']}/{v['finished']} | "
                    f"{pm(v['seconds_to_target'], digits=1)} | "
                    f"{', '.join(f'{x:.2f}' for x in v['epoch1_train_loss'])} | {mode} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="directory holding cifar-10-batches-py/")
    ap.add_argument("--plan", type=Path, required=True, help="plan file (JSON, see above)")
    ap.add_argument("--jsonl", type=Path, required=True, help="one JSON line per finished run (appended; resumes)")
    ap.add_argument("--previous", type=Path, nargs="*", default=[],
                    help="earlier runs' JSON lines (read only): what they finished is not run again")
    ap.add_argument("--epochs-jsonl", type=Path, default=None, help="also one JSON line per epoch of every run")
    ap.add_argument("--budget-s", type=float, default=None, help="plan only runs that fit this many seconds [no limit]")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N [auto]")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a TrainConfig field in every run (repeatable): toy sizes for a CPU dry run")
    ap.add_argument("--runs-dir", type=Path, default=None,
                    help="keep run directories here as VARIANT/seedN [default: a temporary directory]")
    ap.add_argument("--summary-out", type=Path, default=None, help="also write the per-variant summary as JSON")
    args = ap.parse_args(argv)
    try:
        base = parse_overrides(args.overrides)
        plan = load_plan(args.plan, base)
        lines = run_sweep(plan, data_dir=args.data_dir, jsonl=args.jsonl, device=args.device, base_overrides=base,
                          previous=args.previous, runs_dir=args.runs_dir, budget_s=args.budget_s,
                          epochs_jsonl=args.epochs_jsonl)
    except FastCifarError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code if exc.exit_code != 1 else 2
    except (KeyboardInterrupt, SweepStopped) as exc:
        how = "stopped by SIGTERM" if isinstance(exc, SweepStopped) else "interrupted"
        print(f"Error: {how}; every finished run is in {args.jsonl}, and rerunning the same command "
              "continues with the rest", file=sys.stderr)
        return PREEMPTED_EXIT if isinstance(exc, SweepStopped) else 130
    summary = summarize(lines)
    print(markdown(summary, plan.target))
    if args.summary_out:
        from fastcifar.fileio import write_json

        write_json(args.summary_out, {"target": plan.target, "variants": summary})
    return 0 if all(v["failed"] == 0 for v in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
