"""`sandbox sweep`: an Optuna study over a SWEEP.toml's space.

    sweep(spec, out, trials=None, workers=1, storage=None) -> SweepResult

The study lives in `out/study.db` (SQLite) unless `storage` names another
Optuna RDB URL (PostgreSQL, MySQL: workers on many machines then share one
study, Optuna's own distributed mode); a second call continues it. `workers`
trials run at a time on the one study (threads, each driving a child
process); Optuna hands each trial its own number and values, so no two
workers run the same trial. Trial N works in `out/trials/N/`. A failed trial
is recorded (state FAIL, user attribute `error`) and the sweep goes on.
After the trials: `out/trials.csv`, `out/best.toml`, `out/sweep.png`.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.errors import SandboxError
from sandbox.sweep_spec import SweepSpec
from sandbox.sweep_trial import TrialFailed, evaluate

MAX_WORKERS = 64


@dataclass(frozen=True)
class SweepResult:
    """What a sweep invocation left: the study's counts and its best trial."""

    out: Path
    storage: str
    study_name: str
    complete: int
    pruned: int
    failed: int
    ran_now: int  # trials this invocation ran
    best_value: float | None
    best_params: dict
    files: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"out": str(self.out), "storage": self.storage, "study": self.study_name,
                "complete": self.complete, "pruned": self.pruned, "failed": self.failed,
                "ran_now": self.ran_now, "best_value": self.best_value,
                "best_params": self.best_params, "files": list(self.files)}

    def __str__(self) -> str:
        best = ("no complete trial" if self.best_value is None else
                f"best {self.best_value:.6g} with " + ", ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in self.best_params.items()))
        return (f"sweep: {self.complete} complete, {self.pruned} pruned, {self.failed} failed "
                f"({self.ran_now} run now); {best}; wrote {', '.join(self.files)} in {self.out}")


def _sampler(spec: SweepSpec, offset: int) -> Any:
    import optuna

    seed = (spec.seed + offset) % 2**32  # a resumed study draws new values, not the same ones
    if spec.sampler == "grid":
        return optuna.samplers.GridSampler(spec.grid, seed=seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(spec: SweepSpec) -> Any:
    import optuna

    if spec.pruner == "none":
        return optuna.pruners.NopPruner()
    steps = spec.base.train.steps
    return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=max(1, steps // 3))


def suggest(trial: Any, spec: SweepSpec) -> dict:
    """The trial's values for every `[space]` entry, by dotted plan field."""
    params = {}
    for p in spec.space:
        if p.choices:
            params[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.is_int:
            params[p.name] = trial.suggest_int(p.name, p.low, p.high, step=p.step or 1,
                                               log=p.log)
        else:
            params[p.name] = trial.suggest_float(p.name, float(p.low), float(p.high),
                                                 step=p.step, log=p.log)
    return params


def open_study(spec: SweepSpec, storage: str) -> Any:
    """Create or continue the study; a direction that differs from the stored one is refused."""
    import optuna

    try:
        study = optuna.create_study(study_name=spec.name, storage=storage,
                                    direction=spec.direction, load_if_exists=True)
    except (ImportError, ModuleNotFoundError) as e:
        raise SandboxError(f"--storage {storage}: its database driver is not installed "
                           f"({e.name or e})") from None
    except Exception as e:  # sqlalchemy: a URL it cannot open
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise SandboxError(f"--storage {storage}: cannot open the study ({first})") from None
    stored = study.direction.name.lower()
    if stored != spec.direction:
        raise SandboxError(f"direction: the study '{spec.name}' in {storage} was made to "
                           f"{stored}, not {spec.direction}; use another name or --out")
    study.sampler = _sampler(spec, len(study.trials))
    study.pruner = _pruner(spec)
    return study


def _grid_left(spec: SweepSpec, study: Any) -> int:
    """Grid points no finished trial visited (a failed point counts, as for GridSampler)."""
    done = {tuple(sorted(t.params.items())) for t in study.trials if t.state.is_finished()}
    return math.prod(len(v) for v in spec.grid.values()) - len(done)


def sweep(spec: SweepSpec, out: str | Path, trials: int | None = None, workers: int = 1,
          storage: str | None = None, progress: bool = True) -> SweepResult:
    """Run `trials` more trials (default: the spec's; grid: what is left of it) with
    `workers` at a time, then write the outputs (see the module docstring)."""
    import optuna

    from sandbox.sweep_outputs import write_outputs

    if not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise SandboxError(f"--workers: must be from 1 to {MAX_WORKERS}, got {workers!r}")
    out = Path(out)
    (out / "trials").mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = open_study(spec, url)
    n = trials if trials is not None else spec.trials
    if spec.sampler == "grid":
        n = min(n, _grid_left(spec, study))
    lock = threading.Lock()  # one ask at a time: the grid sampler sees the running trials

    def objective(trial: optuna.Trial) -> float:
        with lock:
            params = suggest(trial, spec)
        start = time.perf_counter()
        try:
            value = evaluate(spec, params, out / "trials" / str(trial.number), trial)
        except TrialFailed as e:
            trial.set_user_attr("error", str(e))
            _say(progress, f"sweep: trial {trial.number} failed: {e}")
            return float("nan")  # recorded as FAIL; the sweep goes on
        except optuna.TrialPruned:
            _say(progress, f"sweep: trial {trial.number} pruned after "
                 f"{time.perf_counter() - start:.1f} s")
            raise
        _say(progress, f"sweep: trial {trial.number} {spec.objective} = {value:.6g} "
             f"({_fmt(params)}) in {time.perf_counter() - start:.1f} s")
        return value

    if n > 0:
        study.optimize(objective, n_trials=n, n_jobs=workers, gc_after_trial=False)
    files = write_outputs(spec, study, out)
    states = [t.state for t in study.trials]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value) if spec.direction == "minimize" and complete \
        else max(complete, key=lambda t: t.value) if complete else None
    return SweepResult(out=out, storage=url, study_name=spec.name, complete=len(complete),
                       pruned=states.count(optuna.trial.TrialState.PRUNED),
                       failed=states.count(optuna.trial.TrialState.FAIL), ran_now=max(n, 0),
                       best_value=best.value if best else None,
                       best_params=dict(best.params) if best else {}, files=files)


def _fmt(params: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in params.items())


def _say(progress: bool, line: str) -> None:
    if progress:
        print(line, file=sys.stderr, flush=True)
