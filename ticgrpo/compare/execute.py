"""Run a planned comparison (`ticgrpo.compare.plan`): in process or as `ticgrpo train` subprocesses.

    outcomes = run_plan(plan, parallel=1)        # in-process, one after another
    outcomes = run_plan(plan, parallel=2)        # `ticgrpo train` subprocesses, two at a time

Each run folder gets `compare.json` before training and `compare_done.json` after it, so that a
re-run skips finished runs and resumes unfinished ones (see `ticgrpo.compare.plan`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ticgrpo.compare.plan import (
    COMPARISON_FILE,
    DONE_MARKER,
    MARKER,
    ComparisonPlan,
    ConfigError,
    RunOutcome,
    RunSpec,
)
from ticgrpo.config import config_to_yaml

# ---------------------------------------------------------------------- running


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def write_comparison_file(plan: ComparisonPlan) -> None:
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    info = {
        "base_config": plan.base_config,
        "algorithms": plan.algorithms,
        "seeds": plan.seeds,
        "overrides": plan.overrides,
        "specs": plan.specs,
        "command": " ".join(sys.argv),
        "updated": _now(),
    }
    (plan.out_dir / COMPARISON_FILE).write_text(json.dumps(info, indent=1, default=str) + "\n")


def _prepare(run: RunSpec) -> bool:
    """Write the identity marker and the resolved config; returns whether to pass --resume."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    identity = {"algorithm": run.algorithm, "seed": run.seed, "spec": run.spec, "started": _now()}
    (run.run_dir / MARKER).write_text(json.dumps(identity, indent=1, default=str) + "\n")
    (run.run_dir / "config.yaml").write_text(config_to_yaml(run.config))
    return run.status == "resume"


def _finish(run: RunSpec, wall_s: float) -> None:
    from ticgrpo.reports.io import read_jsonl

    steps = [m["step"] for m in read_jsonl(run.run_dir / "metrics.jsonl")]
    done = {"algorithm": run.algorithm, "seed": run.seed, "steps": max(steps, default=0),
            "wall_s": round(wall_s, 3), "finished": _now()}
    (run.run_dir / DONE_MARKER).write_text(json.dumps(done, indent=1) + "\n")


def run_in_process(run: RunSpec) -> RunOutcome:
    from ticgrpo.train import train

    resume = _prepare(run)
    start = time.perf_counter()
    try:
        train(run.config, resume=resume, overwrite=not resume)  # this comparison's own folder (checked)
    except Exception as exc:  # one failed run must not lose the others
        (run.run_dir / "error.log").write_text(traceback.format_exc())
        return RunOutcome(run, False, wall_s=time.perf_counter() - start,
                          error=f"{type(exc).__name__}: {exc} (traceback in {run.run_dir / 'error.log'})")
    wall = time.perf_counter() - start
    _finish(run, wall)
    return RunOutcome(run, True, wall_s=wall)


class _Children:
    """The subprocesses this comparison started (to stop them, and only them, on interrupt)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.procs: set[subprocess.Popen] = set()
        self.stopping = False

    def terminate(self) -> None:
        with self.lock:
            self.stopping = True
            procs = list(self.procs)
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def run_subprocess(run: RunSpec, threads: int | None = None, children: _Children | None = None) -> RunOutcome:
    """`python -m ticgrpo.cli train --config <run>/config.yaml [--resume]`, output in <run>/train.log."""
    resume = _prepare(run)
    cmd = [sys.executable, "-m", "ticgrpo.cli", "train", "--config", str(run.run_dir / "config.yaml"),
           "--set", "logging.progress_bar=false"] + (["--resume"] if resume else ["--overwrite"])
    env = dict(os.environ)
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
    start = time.perf_counter()
    with open(run.run_dir / "train.log", "a") as log:
        log.write(f"\n# {_now()} {' '.join(cmd)}\n")
        log.flush()
        if children is not None and children.stopping:
            return RunOutcome(run, False, error="interrupted")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        if children is not None:
            with children.lock:
                children.procs.add(proc)
        try:
            code = proc.wait()
        finally:
            if children is not None:
                with children.lock:
                    children.procs.discard(proc)
    wall = time.perf_counter() - start
    if code != 0:
        tail = (run.run_dir / "train.log").read_text().strip().splitlines()[-1:]
        return RunOutcome(run, False, wall_s=wall,
                          error=f"exit code {code}: {tail[0] if tail else ''} (log: {run.run_dir / 'train.log'})")
    _finish(run, wall)
    return RunOutcome(run, True, wall_s=wall)


def run_plan(
    plan: ComparisonPlan,
    parallel: int = 1,
    log: Any = print,
    subprocesses: bool | None = None,
) -> list[RunOutcome]:
    """Run every pending run of the plan; finished runs are skipped. `parallel` > 1 (or
    `subprocesses=True`) runs `ticgrpo train` subprocesses; otherwise train() in this process."""
    if parallel < 1:
        raise ConfigError(f"--parallel must be >= 1, got {parallel}")
    write_comparison_file(plan)
    outcomes: list[RunOutcome] = []
    pending = []
    for run in plan.runs:
        if run.status == "done":
            outcomes.append(RunOutcome(run, True, skipped=True))
            log(f"skip   {run.label}: finished earlier ({run.run_dir})")
        else:
            pending.append(run)
    total = len(pending)
    use_subprocesses = parallel > 1 if subprocesses is None else subprocesses
    counter = {"n": 0}
    lock = threading.Lock()

    def report(outcome: RunOutcome) -> None:
        with lock:
            counter["n"] += 1
            state = "done  " if outcome.ok else "FAILED"
            extra = "" if outcome.ok else f": {outcome.error}"
            log(f"{state} [{counter['n']}/{total}] {outcome.run.label} in {outcome.wall_s:.0f} s{extra}")

    for run in pending:
        verb = {"resume": "resume from checkpoint", "restart": "restart (no checkpoint)"}.get(run.status, "start")
        if not use_subprocesses:
            log(f"{verb} {run.label} → {run.run_dir}")
            outcome = run_in_process(run)
            report(outcome)
            outcomes.append(outcome)
    if use_subprocesses and pending:
        threads = max(1, (os.cpu_count() or 1) // parallel)
        children = _Children()
        log(f"running {total} runs, {parallel} at a time ({threads} CPU threads each); logs in <run>/train.log")
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            futures = [pool.submit(run_subprocess, run, threads, children) for run in pending]
            try:
                for future in futures:
                    outcome = future.result()
                    report(outcome)
                    outcomes.append(outcome)
            except KeyboardInterrupt:
                children.terminate()
                for future in futures:
                    future.cancel()
                raise
    order = {(r.algorithm, r.seed): i for i, r in enumerate(plan.runs)}
    return sorted(outcomes, key=lambda o: order[(o.run.algorithm, o.run.seed)])


__all__ = ["run_in_process", "run_plan", "run_subprocess", "write_comparison_file"]
