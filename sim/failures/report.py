"""A whole training run with failures: Monte Carlo of checkpoints, restarts and lost work.

Model (all times in seconds of wall clock):
- The job needs `W` of failure-free compute, its budget: `steps * step_time_s`
  (default `train.steps`; `tokens` are whole steps of `plan.tokens_per_step`)
  or `work_s` seconds given directly (see `budget`).
  It stops for `C` (checkpoint cost) after every `T` of compute, except at
  the end. An interruption loses the compute since the last *completed*
  checkpoint (a checkpoint being written when hit is lost too), then the
  job is down for `D = restart_s + restore` before computing again. A
  failure during the downtime restarts the downtime.
- Failures are drawn in wall-clock time, independently of what the job is
  doing, per component class (see `sim.failures.checkpoint_cost`). Exponential: one
  Poisson process of the summed rate, each event labelled with its cause.
  Weibull (`cluster.failure_distribution = "weibull"`, `weibull_shape` k):
  every component is a renewal process with Weibull lifetimes of mean
  `component MTBF`, new at time 0 and replaced when it fails.
- Every run replays the same failure trace against every candidate interval
  (common random numbers), so the curve of time to train against `T` is
  smooth; the best interval is the vertex of a quadratic in log T fitted
  around the grid's minimum. Deterministic for a seed.

Rendering (an HTML table, the interval sweep plot) is `sandbox.failures_view`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sandbox.errors import SandboxError
from sandbox.specs import Plan
from sim.failures import checkpoint_cost as cc

HOUR = 3600.0
# Failures drawn per simulated run: the traces hold runs x this many times and
# causes (16 bytes each) and the replay loops once per failure. Measured: 100
# runs x 25 intervals with 12,500 failures drawn per run take 3.2 s and 90 MB,
# so 20,000 is about 5 s per sweep (a report sweeps twice); more is refused.
MAX_FAILURES_PER_RUN = 20_000


# ----------------------------------------------------------- failure traces
def exponential_trace(rates_per_s: np.ndarray, horizon_s: float, runs: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Failure times (runs x n, sorted, padded with inf) and cause indices (-1 pad)."""
    total = float(rates_per_s.sum())
    n = rng.poisson(total * horizon_s, size=runs) if total > 0 else np.zeros(runs, int)
    width = max(int(n.max()), 1)
    times = np.full((runs, width), np.inf)
    causes = np.full((runs, width), -1, dtype=np.int64)
    p = rates_per_s / total if total > 0 else None
    for r in range(runs):
        k = int(n[r])
        times[r, :k] = np.sort(rng.uniform(0.0, horizon_s, k))
        if k:
            causes[r, :k] = rng.choice(len(rates_per_s), size=k, p=p)
    return times, causes


def weibull_trace(counts: np.ndarray, mtbf_s: np.ndarray, shape: float, horizon_s: float,
                  runs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Like `exponential_trace` from per-component Weibull renewal processes."""
    scale = mtbf_s / math.gamma(1.0 + 1.0 / shape)
    per_run: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(runs):
        ts, cs = [], []
        for c, (n, s) in enumerate(zip(counts, scale, strict=True)):
            if n == 0 or not np.isfinite(s):
                continue
            t = s * rng.weibull(shape, int(n))
            while t.size:
                t = t[t < horizon_s]
                ts.append(t)
                cs.append(np.full(t.size, c))
                t = t + s * rng.weibull(shape, t.size)
        t_all = np.concatenate(ts) if ts else np.zeros(0)
        c_all = np.concatenate(cs) if cs else np.zeros(0, dtype=np.int64)
        order = np.argsort(t_all, kind="stable")
        per_run.append((t_all[order], c_all[order]))
    width = max(max(t.size for t, _ in per_run), 1)
    times = np.full((runs, width), np.inf)
    causes = np.full((runs, width), -1, dtype=np.int64)
    for r, (t, c) in enumerate(per_run):
        times[r, :t.size], causes[r, :t.size] = t, c
    return times, causes


# ----------------------------------------------------------------- replay
def replay(times: np.ndarray, causes: np.ndarray, n_causes: int, work_s: float,
           intervals_s: np.ndarray, checkpoint_s: float, downtime_s: float) -> dict:
    """Replay failure traces against checkpoint intervals, vectorised.

    Returns arrays of shape (runs, intervals): `wall_s`, `running_s` (time
    computing or checkpointing), `checkpoints`, `interruptions`, and
    `by_cause` (runs, intervals, causes).
    """
    runs, k = times.shape[0], len(intervals_s)
    T = np.broadcast_to(np.asarray(intervals_s, float), (runs, k))
    t = np.zeros((runs, k))  # when computing (re)starts
    p = np.zeros((runs, k))  # committed work
    running = np.zeros((runs, k))
    ckpts = np.zeros((runs, k))
    wall = np.full((runs, k), np.nan)
    by_cause = np.zeros((runs, k, n_causes))
    done = np.zeros((runs, k), bool)
    eps = 1e-9
    for j in range(times.shape[1] + 1):
        f = times[:, j:j + 1] if j < times.shape[1] else np.full((runs, 1), np.inf)
        segs = np.ceil((work_s - p) / T - eps)
        t_end = t + (work_s - p) + (segs - 1) * checkpoint_s
        finish = ~done & (f >= t_end)
        wall = np.where(finish, t_end, wall)
        running = np.where(finish, running + t_end - t, running)
        ckpts = np.where(finish, ckpts + segs - 1, ckpts)
        done |= finish
        hit = ~done & (f >= t)
        down = ~done & (f < t)
        n = np.floor((f - t) / (T + checkpoint_s))
        p = np.where(hit, p + n * T, p)
        ckpts = np.where(hit, ckpts + n, ckpts)
        running = np.where(hit, running + f - t, running)
        t = np.where(hit | down, f + downtime_s, t)
        if j < times.shape[1]:
            struck = hit | down
            for c in range(n_causes):
                by_cause[:, :, c] += struck & (causes[:, j:j + 1] == c)
        if done.all():
            break
    return {"wall_s": wall, "running_s": running, "checkpoints": ckpts,
            "interruptions": by_cause.sum(axis=2), "by_cause": by_cause}


def simulate_intervals(work_s: float, intervals_s: np.ndarray, checkpoint_s: float,
                       downtime_s: float, counts: np.ndarray, mtbf_s: np.ndarray, *,
                       distribution: str = "exponential", shape: float = 1.0,
                       runs: int = 100, seed: int = 0) -> dict:
    """Monte Carlo of `runs` whole runs for each interval, one trace per run.

    `counts` and `mtbf_s` are per component class (mtbf 0 or inf: never).
    The horizon of the traces grows until every run has finished inside it.
    """
    counts = np.asarray(counts, float)
    mtbf = np.where(np.asarray(mtbf_s, float) > 0, mtbf_s, np.inf)
    rates = np.where(np.isfinite(mtbf), counts / mtbf, 0.0)
    total = rates.sum()
    m = 1.0 / total if total > 0 else math.inf
    horizon = 1.5 * max(cc.daly_expected_wall_s(work_s, float(t), checkpoint_s, downtime_s, m)
                        for t in intervals_s) + 20 * (downtime_s + m if total > 0 else 0.0)
    while True:
        _check_failures(total * horizon, horizon)
        rng = np.random.default_rng(seed)
        if distribution == "weibull":
            times, causes = weibull_trace(counts, mtbf, shape, horizon, runs, rng)
        else:
            times, causes = exponential_trace(rates, horizon, runs, rng)
        out = replay(times, causes, len(counts), work_s, np.asarray(intervals_s, float),
                     checkpoint_s, downtime_s)
        if total == 0 or np.nanmax(out["wall_s"]) <= horizon:
            return out
        horizon *= 2.0


def check_seed(seed: int) -> None:
    """Refuse (one line) a seed numpy cannot take."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise SandboxError(f"--seed: must be an integer from 0 to 2**63 - 1, got {seed!r}")


def budget(plan: Plan, *, steps: float | None = None, tokens: float | None = None,
           work_s: float | None = None) -> tuple[float | None, str]:
    """The work of a run -> (steps, source), or (None, source) for `work_s`
    seconds of failure-free compute, whose steps depend on the step time.

    At most one of `steps`, `tokens` (rounded up to whole steps of
    `plan.tokens_per_step`) and `work_s` (s); none: `plan.train.steps`.
    Refuses (one line) a value that is not finite and > 0.
    """
    given = {k: v for k, v in (("steps", steps), ("tokens", tokens), ("work_s", work_s))
             if v is not None}
    if len(given) > 1:
        raise SandboxError(f"failures: give one budget, not {' and '.join(given)}")
    for k, v in given.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) \
                or v <= 0:
            raise SandboxError(f"failures: the budget's {k} must be a finite number > 0, "
                               f"got {v!r}")
    if tokens is not None:
        return float(max(math.ceil(tokens / plan.tokens_per_step), 1)), "tokens"
    if work_s is not None:
        return None, "failure-free time"
    if steps is not None:
        return float(steps), "steps"
    return float(plan.train.steps), "plan's train.steps"


def check_failure_inputs(plan: Plan, seed: int = 0, step_time_s: float | None = None, *,
                         steps: float | None = None, tokens: float | None = None,
                         work_s: float | None = None) -> None:
    """Refuse (one line), before the step is simulated, a bad seed or budget
    (see `budget`) or a run that fails more than MAX_FAILURES_PER_RUN times
    even at the step time's lower bound (`sim.search.space.
    step_time_lower_bound`, s) when `step_time_s` is not known yet. The Monte
    Carlo checks its own horizon again."""
    check_seed(seed)
    n, _ = budget(plan, steps=steps, tokens=tokens, work_s=work_s)
    if n is None:
        work = float(work_s)
    else:
        if step_time_s is None:
            from sim.search.space import step_time_lower_bound

            try:
                step_time_s = step_time_lower_bound(plan)
            except Exception:  # best effort: simulate_intervals still refuses in time
                return
        work = n * step_time_s
    m_s = cc.job_mtbf_h(plan.cluster) * HOUR
    if math.isfinite(m_s) and m_s > 0:
        wall = 1.5 * work  # the horizon is at least this
        _check_failures(wall / m_s, wall)


def _check_failures(expected: float, horizon_s: float) -> None:
    """Refuse (one line) a Monte Carlo expecting more than MAX_FAILURES_PER_RUN failures per run."""
    if expected > MAX_FAILURES_PER_RUN:
        raise SandboxError(f"failures: about {expected:,.0f} failures per simulated run "
                           f"({horizon_s / HOUR:,.0f} h of wall clock), more than the limit "
                           f"of {MAX_FAILURES_PER_RUN:,}; give a smaller budget (steps, --tokens, "
                           "--days) or fewer GPUs")


def best_interval(intervals_s: np.ndarray, mean_wall_s: np.ndarray) -> float:
    """Vertex of a quadratic in log(interval) fitted around the grid's minimum."""
    i = int(np.argmin(mean_wall_s))
    lo, hi = max(i - 3, 0), min(i + 4, len(intervals_s))
    if hi - lo < 3:
        return float(intervals_s[i])
    x = np.log(intervals_s[lo:hi])
    a, b, _ = np.polyfit(x, mean_wall_s[lo:hi], 2)
    if a <= 0:
        return float(intervals_s[i])
    return float(np.exp(np.clip(-b / (2 * a), x.min(), x.max())))


# ----------------------------------------------------------------- report
@dataclass
class FailureReport:
    """A whole run with failures: times in seconds or hours as named."""

    goodput: float  # failure-free compute time / expected wall time
    expected_time_to_train_h: float
    time_to_train_p10_h: float
    time_to_train_p90_h: float
    time_to_train_std_h: float
    checkpoint_cost_s: float
    restore_cost_s: float
    restart_s: float
    checkpoint_interval_s: float  # compute between checkpoints
    checkpoint_every_steps: int
    interval_source: str  # "simulated best" | "plan"
    job_mtbf_h: float
    young_daly_interval_s: float
    first_order_goodput: float
    failure_free_time_h: float
    budget_steps: float  # steps of the budget (fractional for a budget in time)
    budget_tokens: float  # budget_steps * plan.tokens_per_step
    budget_source: str  # "plan's train.steps" | "steps" | "tokens" | "failure-free time"
    checkpoint_bytes: float
    expected_interruptions: float  # mean per run
    interruptions_p10: float  # over the runs
    interruptions_p90: float
    interruptions_by_cause: dict[str, float]  # mean count per run
    interruption_share: dict[str, float]
    component_counts: dict[str, int]
    lost_work_h: float  # compute thrown away, mean per run
    downtime_h: float  # restart + restore, mean per run
    checkpoint_time_h: float  # checkpoints written, mean per run
    expected_cost_usd: float
    cost_p10_usd: float
    cost_p90_usd: float
    runs: int
    seed: int
    distribution: str
    sweep: dict[str, list[float]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v
        return {k: clean(v) for k, v in self.__dict__.items()}


def failure_report(plan: Plan, step_time_s: float, *, seed: int = 0, runs: int = 100,
                   interval_s: float | None = None, grid: int = 25,
                   steps: float | None = None, tokens: float | None = None,
                   work_s: float | None = None) -> FailureReport:
    """Price a run of `step_time_s`-second steps with failures over `runs`
    simulated runs. Its budget: `steps`, `tokens` or `work_s` seconds of
    failure-free compute (see `budget`; default `plan.train.steps`).

    The interval is `interval_s` if given, else `train.checkpoint_every *
    step_time_s`, else (checkpoint_every = 0) the best interval found by
    simulating a grid around Young/Daly, rounded to whole steps.
    """
    if step_time_s <= 0:
        raise ValueError("step_time_s must be > 0")
    check_failure_inputs(plan, seed, step_time_s, steps=steps, tokens=tokens, work_s=work_s)
    n_steps, origin = budget(plan, steps=steps, tokens=tokens, work_s=work_s)
    if n_steps is None:
        n_steps = float(work_s) / step_time_s
    cl = plan.cluster
    work = float(work_s) if work_s is not None else n_steps * step_time_s
    C, D = cc.checkpoint_cost_s(plan), cc.downtime_s(plan)
    n_comp = cc.component_counts(cl)
    mtbf_h = cc.component_mtbf_h(cl)
    counts = np.array([n_comp[c] for c in cc.CAUSES], float)
    mtbf_s = np.array([mtbf_h[c] * HOUR for c in cc.CAUSES])
    m_h = cc.job_mtbf_h(cl)
    m_s = m_h * HOUR
    yd = cc.young_daly_interval_s(m_s, C)
    kw = {"distribution": cl.failure_distribution, "shape": cl.weibull_shape,
          "runs": runs, "seed": seed}

    def snap(t: float) -> float:  # whole steps, within [1 step, whole run]
        return min(max(round(t / step_time_s), 1) * step_time_s, work)

    centre = yd if math.isfinite(yd) else work
    lo, hi = max(centre / 8, step_time_s), min(centre * 8, work)
    grid_s = np.unique(np.geomspace(lo, max(hi, lo), grid))
    fixed = interval_s or (plan.train.checkpoint_every * step_time_s
                           if plan.train.checkpoint_every > 0 else None)
    sweep = simulate_intervals(work, grid_s, C, D, counts, mtbf_s, **kw)
    mean_wall = sweep["wall_s"].mean(axis=0)
    if fixed:
        chosen, source = float(fixed), "plan"
    elif math.isfinite(m_s):
        chosen, source = snap(best_interval(grid_s, mean_wall)), "simulated best"
    else:
        chosen, source = work, "simulated best"  # nothing fails: never checkpoint
    at = simulate_intervals(work, np.array([chosen]), C, D, counts, mtbf_s, **kw)
    wall = at["wall_s"][:, 0]
    by_cause = at["by_cause"][:, 0, :].mean(axis=0)
    n_int = float(by_cause.sum())
    per_run = at["interruptions"][:, 0]
    usd = cl.world_size * cl.usd_per_gpu_hour / HOUR
    q = np.percentile
    return FailureReport(
        goodput=work / float(wall.mean()),
        expected_time_to_train_h=float(wall.mean()) / HOUR,
        time_to_train_p10_h=float(q(wall, 10)) / HOUR,
        time_to_train_p90_h=float(q(wall, 90)) / HOUR,
        time_to_train_std_h=float(wall.std()) / HOUR,
        checkpoint_cost_s=C, restore_cost_s=cc.restore_cost_s(plan), restart_s=cl.restart_s,
        checkpoint_interval_s=chosen,
        checkpoint_every_steps=max(round(chosen / step_time_s), 1),
        interval_source=source, job_mtbf_h=m_h, young_daly_interval_s=yd,
        first_order_goodput=(cc.first_order_goodput(chosen, C, D, m_s)
                             if math.isfinite(m_s) else 1.0),
        failure_free_time_h=work / HOUR, budget_steps=n_steps,
        budget_tokens=n_steps * plan.tokens_per_step, budget_source=origin,
        checkpoint_bytes=cc.checkpoint_bytes(plan), expected_interruptions=n_int,
        interruptions_p10=float(q(per_run, 10)), interruptions_p90=float(q(per_run, 90)),
        interruptions_by_cause={c: float(v) for c, v in zip(cc.CAUSES, by_cause, strict=True)},
        interruption_share={c: (float(v) / n_int if n_int else 0.0)
                            for c, v in zip(cc.CAUSES, by_cause, strict=True)},
        component_counts=n_comp,
        lost_work_h=float((at["running_s"][:, 0] - work - at["checkpoints"][:, 0] * C).mean())
        / HOUR,
        downtime_h=float((wall - at["running_s"][:, 0]).mean()) / HOUR,
        checkpoint_time_h=float(at["checkpoints"][:, 0].mean()) * C / HOUR,
        expected_cost_usd=float(wall.mean()) * usd,
        cost_p10_usd=float(q(wall, 10)) * usd, cost_p90_usd=float(q(wall, 90)) * usd,
        runs=runs, seed=seed, distribution=cl.failure_distribution,
        sweep={"interval_s": grid_s.tolist(),
               "mean_time_to_train_h": (mean_wall / HOUR).tolist(),
               "p10_time_to_train_h": (q(sweep["wall_s"], 10, axis=0) / HOUR).tolist(),
               "p90_time_to_train_h": (q(sweep["wall_s"], 90, axis=0) / HOUR).tolist()})
