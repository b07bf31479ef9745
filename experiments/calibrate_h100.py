"""Fit the H100 profile on the public H100 sets, cross-validated between them.

We have no H100 to micro-benchmark in CI, so the constants a `sandbox
calibrate --device cuda` run would measure are fitted to published runs
(`../shared/validation/`): Megatron-Core's weak-scaling table (TFLOP/s per
GPU) and torchtitan's H100 / H200 rows (tokens/s per GPU). Global constants
only, never one per row (`PARAMS`):

- `matmul_efficiency`, `matmul_half_flops`: the BF16 cuBLAS GEMM curve,
- `fp8_matmul_efficiency`: the FP8 GEMMs' fraction of the FP8 peak,
- `attention_kernel_efficiency`: the fraction of its published rate a flash-attention
  kernel reaches in training (one factor, the framework's glue; the shape of the rate
  over sequence, head dim, direction and kernel generation comes from the kernels'
  own H100 benchmarks, `sandbox.attention_kernels`; each row names its kernel in
  `experiments.h100_cases`),
- `collective_efficiency`: NCCL's share of link bandwidth,
- `host_op_overhead_s`: the host's dispatch per kernel (eager PyTorch).

Everything else is a spec (presets) or a `sandbox/profile.py` default. The
objective is the mean |log(predicted / measured)|, averaged per set so both
weigh the same. The plan of a row whose source leaves micro-batch /
recompute / interleaving open is the fastest that fits under the current
constants: chosen with the defaults, then again after a first fit (two
rounds). Cross-validation: fit on one set, report the other. Llama 3's
Table 4 and NeMo AutoModel are never fitted on (`experiments.validate_h100`
reports them). Writes `sandbox/profiles/h100.toml` (fitted on both sets) and
`experiments/results/h100_calibration.{md,json}`.

Profiles fitted before the kernel curves held one flat `attention_efficiency`
(every flash kernel at one fraction of peak). `--convert-legacy` rewrites
`h100.toml`'s `attention_kernel_efficiency` from it without a fit: the factor
that keeps the rate the old constant gave at the shape its torchtitan rows run
(Llama 3 8B, 8,192 tokens, head dim 128, causal, FlashAttention-2, forward +
backward; `kernel_efficiency_from_legacy`). A stop-gap until the next fit.

    python -m experiments.calibrate_h100 [--iters N] [--convert-legacy]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from experiments import provenance
from experiments.calibrate_vtrain_a100 import nelder_mead
from experiments.h100_cases import Case, megatron_cases, torchtitan_cases
from experiments.validate_h100 import metric_of, predict
from sandbox.profile import Profile

ROOT = provenance.ROOT
PROFILE_OUT = ROOT / "sandbox" / "profiles" / "h100.toml"
RESULTS = ROOT / "experiments" / "results"
# name -> (kind, start); "frac" in (0, 1) (logit), "pos" in (0, inf) (log)
PARAMS = {
    "matmul_efficiency": ("frac", 0.80),
    "matmul_half_flops": ("pos", 2.0e9),
    "fp8_matmul_efficiency": ("frac", 0.80),
    "attention_kernel_efficiency": ("frac", 0.70),
    "collective_efficiency": ("frac", 0.80),
    "host_op_overhead_s": ("pos", 1.0e-5),
}


def decode(x: np.ndarray) -> dict[str, float]:
    return {name: 1 / (1 + math.exp(-v)) if kind == "frac" else math.exp(v)
            for (name, (kind, _)), v in zip(PARAMS.items(), x, strict=True)}


def encode(values: dict[str, float]) -> np.ndarray:
    return np.array([math.log(values[k] / (1 - values[k])) if kind == "frac"
                     else math.log(values[k]) for k, (kind, _) in PARAMS.items()])


def profile(values: dict[str, float], name: str = "fit"):
    from sandbox.profile import Profile

    return Profile(name=name, **values)


def kernel_efficiency_from_legacy(legacy: Profile) -> float:
    """`attention_kernel_efficiency` giving the flash rate `legacy` (a profile with
    only the flat `attention_efficiency`) gives at its torchtitan reference shape:
    Llama 3 8B, 8,192 tokens, micro-batch 2, FlashAttention-2 on torchtitan's H100s."""
    import sandbox
    from sim import compute

    plan = sandbox.load({"model": {"preset": "llama3-8b", "seq_len": 8192},
                         "cluster": {"preset": "grand-teton-h100", "nodes": 1},
                         "parallel": {"dp": 8, "micro_batch": 2, "global_batch": 16, "zero": 3},
                         "train": {"attention": "flash", "attention_kernel": "fa2"}})
    old = sum(compute.flash_times(plan, compute.device_of(plan, legacy.replace(
        attention_kernel_efficiency=0.0))))
    new = sum(compute.flash_times(plan, compute.device_of(plan, legacy.replace(
        attention_kernel_efficiency=1.0))))
    return new / old


def convert_legacy(path: Path = PROFILE_OUT) -> float:
    """Write `kernel_efficiency_from_legacy` of the profile at `path` into it."""
    from sandbox.profile import dump_profile, load_profile

    legacy = load_profile(path)
    k = kernel_efficiency_from_legacy(legacy)
    note = (f"; attention_kernel_efficiency {k:.4f} converted from attention_efficiency "
            "by `python -m experiments.calibrate_h100 --convert-legacy` (not fitted)")
    dump_profile(legacy.replace(attention_kernel_efficiency=k,
                                source=legacy.source.split("; attention_kernel")[0] + note), path)
    return k


def fit_sets() -> dict[str, list[Case]]:
    """The two fitted sets: Megatron-Core's rows, torchtitan's H100/H200 rows."""
    tt = [c for c in torchtitan_cases() if not c.reason and "A100" not in c.name]
    return {"megatron": megatron_cases(), "torchtitan": tt}


_POOL: list = []  # a ProcessPoolExecutor when --jobs > 1


_MEMO_FOR: list = [None]  # the constants the worker's memo tables were filled under


def _fresh_memo(values: dict[str, float]) -> None:
    """Empty `sim.memo` when the fit moves to new constants: its entries are
    keyed by the profile, so the old point's are dead weight (kept, they grew
    a worker past 12 GB in one fit and the OOM killer ended it)."""
    from sim import memo

    key = tuple(sorted(values.items()))
    if _MEMO_FOR[0] != key:
        memo.clear()
        _MEMO_FOR[0] = key


def _predict(job: tuple) -> dict:
    case, values = job
    _fresh_memo(values)
    return predict(case, profile(values))


def predict_all(cases: list[Case], values: dict[str, float]) -> list[dict]:
    """`validate_h100.predict` of every case under `values` (in the pool if any)."""
    jobs = [(c, values) for c in cases]
    return list(_POOL[0].map(_predict, jobs)) if _POOL else [_predict(j) for j in jobs]


def choose(cases: list[Case], values: dict[str, float]) -> list:
    """Each case's fastest fitting plan under `values` (None: none loads)."""
    return [r.get("plan") for r in predict_all(cases, values)]


def _row_error(job: tuple) -> float:
    """|log(predicted / measured)| of one row's plan under constants `values`."""
    from sim import simulate

    plan, metric, measured, values = job
    _fresh_memo(values)
    res = simulate(plan, profile=profile(values), timeline=False)
    return abs(math.log(metric_of(res, metric, plan) / measured))


def set_loss(cases: list[Case], plans: list, values: dict[str, float]) -> float:
    """Mean |log(predicted / measured)| over the rows that have a plan."""
    jobs = [(p, c.metric, c.measured, values) for c, p in zip(cases, plans, strict=True)
            if p is not None]
    if _POOL:
        return float(np.mean(list(_POOL[0].map(_row_error, jobs))))
    return float(np.mean([_row_error(j) for j in jobs]))


def fit(sets: dict[str, list[Case]], iters: int, rounds: int = 2) -> dict[str, float]:
    values = {k: v for k, (_, v) in PARAMS.items()}
    for _ in range(rounds):
        plans = {k: choose(cs, values) for k, cs in sets.items()}

        def objective(x: np.ndarray, plans: dict = plans) -> float:
            v = decode(x)
            return float(np.mean([set_loss(sets[k], plans[k], v) for k in sets]))

        x, _ = nelder_mead(objective, encode(values), iters)
        values = decode(x)
    return values


def errors(cases: list[Case], values: dict[str, float]) -> dict:
    rows = predict_all(cases, values)
    err = np.array([r["error"] for r in rows if "error" in r])
    return {"rows": len(err), "mape": float(np.mean(np.abs(err))),
            "max_ape": float(np.max(np.abs(err))), "mean_signed": float(np.mean(err))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=60, help="Nelder-Mead iterations per fit")
    ap.add_argument("--out", default=str(RESULTS / "h100_calibration"))
    ap.add_argument("--jobs", type=int, default=2, help="processes simulating rows")
    ap.add_argument("--convert-legacy", action="store_true",
                    help="only set h100.toml's attention_kernel_efficiency from its "
                         "attention_efficiency (no fit)")
    args = ap.parse_args(argv)
    if args.convert_legacy:
        print(f"attention_kernel_efficiency = {convert_legacy():.4f} -> {PROFILE_OUT}")
        return 0
    t0 = time.perf_counter()
    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        _POOL.append(ProcessPoolExecutor(args.jobs))
    sets = fit_sets()
    cv = {}
    for held in sets:
        values = fit({k: v for k, v in sets.items() if k != held}, args.iters, rounds=1)
        cv[held] = {"params": values, **errors(sets[held], values)}
        print(f"fit without {held}: {held} MAPE {100 * cv[held]['mape']:.1f}%", flush=True)
    values = fit(sets, args.iters)
    final = {k: errors(cs, values) for k, cs in sets.items()}
    cmd = provenance.command("calibrate_h100", sys.argv[1:] if argv is None else argv)
    source = (f"fitted by `{cmd.strip()}` to Megatron-Core's H100 weak scaling and "
              f"torchtitan's H100/H200 rows (MAPE {100 * final['megatron']['mape']:.1f}% / "
              f"{100 * final['torchtitan']['mape']:.1f}%); other constants are "
              "sandbox/profile.py defaults")
    from sandbox.profile import dump_profile

    dump_profile(profile(values, "h100").replace(source=source), PROFILE_OUT)
    wall = provenance.wall_s(t0)
    report = {"command": cmd, "machine": provenance.machine(("simpy", "numpy")), "wall_s": wall,
              "params": values, "start": {k: v for k, (_, v) in PARAMS.items()},
              "in_sample": final, "cross_validation": cv,
              "profile": str(PROFILE_OUT.relative_to(ROOT))}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    lines = ["# H100 profile fitted to the public H100 sets", "",
             f"- command: `{cmd.strip()}` ({wall:.0f} s on {report['machine']['cpu']})",
             f"- written: `{report['profile']}`", "",
             "| constant | start (default) | fitted (both sets) | fitted without Megatron "
             "| fitted without torchtitan |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {PARAMS[k][1]:.4g} | {v:.4g} | {cv['megatron']['params'][k]:.4g} "
              f"| {cv['torchtitan']['params'][k]:.4g} |" for k, v in values.items()]
    lines += ["", "| evaluation | rows | MAPE | max APE | mean signed |", "|---|---|---|---|---|"]
    lines += [f"| in-sample, {k} | {e['rows']} | {100 * e['mape']:.1f}% | "
              f"{100 * e['max_ape']:.1f}% | {100 * e['mean_signed']:+.1f}% |"
              for k, e in final.items()]
    lines += [f"| {k} held out (fit on the other set) | {c['rows']} | {100 * c['mape']:.1f}% "
              f"| {100 * c['max_ape']:.1f}% | {100 * c['mean_signed']:+.1f}% |"
              for k, c in cv.items()]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
