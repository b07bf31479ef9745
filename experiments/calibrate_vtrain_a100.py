"""Calibrate the A100 + Megatron profile on vTrain's single-node measurements.

We have no A100 to micro-benchmark, so the constants that a `sandbox
calibrate --device cuda` run would measure are instead fitted to the
published single-node iteration times (`../shared/validation/
vtrain_single_node.csv`, 1,440 rows on one 8-GPU A100 node): seven global
constants, never one per row:

- `host_op_overhead_s`: host dispatch per modelled kernel (`sim/host.py`),
- `matmul_efficiency`, `matmul_half_flops`: the cuBLAS GEMM efficiency curve,
- `attention_efficiency`: the batched attention GEMMs (QK^T, PV),
- `memory_efficiency`: memory-bound kernels, fraction of HBM bandwidth,
- `collective_efficiency`, `collective_step_latency_s`: NCCL over the links.

Everything else stays at the documented defaults (`sandbox/profile.py`). The
objective is the mean |log(predicted / measured)| over the rows. Honesty
checks, all written to `experiments/results/vtrain_calibration.{md,json}`:
two-fold cross-validation by model width (fit on hidden 1,024, test on
2,048, and the reverse), and the multi-node CSV, which the fit never sees,
is the held-out test (`experiments/validate_vtrain.py`).

Writes the fitted profile to `sandbox/profiles/a100-megatron.toml`, which
the `vtrain-a100` and `dgx-a100-80g` cluster presets name.

    python experiments/calibrate_vtrain_a100.py [--stride K] [--iters N]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.machine import machine  # noqa: E402
from experiments.validate_vtrain import plan_of, read_rows  # noqa: E402

PROFILE_OUT = ROOT / "sandbox" / "profiles" / "a100-megatron.toml"
RESULTS = ROOT / "experiments" / "results"
# name -> (kind, start); "frac" lives in (0, 1) (logit), "pos" in (0, inf) (log)
PARAMS = {
    "host_op_overhead_s": ("pos", 2.0e-5),
    "matmul_efficiency": ("frac", 0.80),
    "matmul_half_flops": ("pos", 2.0e9),
    "attention_efficiency": ("frac", 0.55),
    "memory_efficiency": ("frac", 0.80),
    "collective_efficiency": ("frac", 0.80),
    "collective_step_latency_s": ("pos", 5.0e-6),
}


def decode(x: np.ndarray) -> dict[str, float]:
    out = {}
    for (name, (kind, _)), v in zip(PARAMS.items(), x, strict=True):
        out[name] = 1 / (1 + math.exp(-v)) if kind == "frac" else math.exp(v)
    return out


def encode(values: dict[str, float]) -> np.ndarray:
    return np.array([math.log(v / (1 - v)) if kind == "frac" else math.log(v)
                     for (kind, _), v in zip(PARAMS.values(), values.values(), strict=True)])


def predictions(plans: list, values: dict[str, float]) -> np.ndarray:
    from sandbox.profile import Profile
    from sim import simulate

    prof = Profile(name="fit", **values)
    return np.array([simulate(p, profile=prof, timeline=False, dp_overlap=False).step_time_s
                     for p in plans])


def loss(plans: list, measured: np.ndarray, values: dict[str, float]) -> float:
    return float(np.mean(np.abs(np.log(predictions(plans, values) / measured))))


def nelder_mead(f, x0: np.ndarray, iters: int, step: float = 0.4) -> tuple[np.ndarray, float]:
    """Plain Nelder-Mead (reflection 1, expansion 2, contraction 0.5, shrink 0.5)."""
    n = len(x0)
    simplex = [x0] + [x0 + step * np.eye(n)[i] for i in range(n)]
    values = [f(x) for x in simplex]
    for _ in range(iters):
        order = np.argsort(values)
        simplex = [simplex[i] for i in order]
        values = [values[i] for i in order]
        centroid = np.mean(simplex[:-1], axis=0)
        xr = centroid + (centroid - simplex[-1])
        fr = f(xr)
        if fr < values[0]:
            xe = centroid + 2 * (centroid - simplex[-1])
            fe = f(xe)
            simplex[-1], values[-1] = (xe, fe) if fe < fr else (xr, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = xr, fr
        else:
            xc = centroid + 0.5 * (simplex[-1] - centroid)
            fc = f(xc)
            if fc < values[-1]:
                simplex[-1], values[-1] = xc, fc
            else:
                simplex = [simplex[0]] + [simplex[0] + 0.5 * (x - simplex[0])
                                          for x in simplex[1:]]
                values = [values[0]] + [f(x) for x in simplex[1:]]
        if max(values) - min(values) < 1e-5:
            break
    best = int(np.argmin(values))
    return simplex[best], values[best]


def fit(rows: list[dict], iters: int) -> tuple[dict[str, float], float]:
    plans = [plan_of(r) for r in rows]
    measured = np.array([r["measured_s"] for r in rows])
    x0 = encode({k: v for k, (_, v) in PARAMS.items()})
    x, best = nelder_mead(lambda x: loss(plans, measured, decode(x)), x0, iters)
    return decode(x), best


def errors(rows: list[dict], values: dict[str, float]) -> dict:
    pred = predictions([plan_of(r) for r in rows], values)
    err = pred / np.array([r["measured_s"] for r in rows]) - 1
    return {"rows": len(rows), "mape": float(np.mean(np.abs(err))),
            "max_ape": float(np.max(np.abs(err))), "mean_signed": float(np.mean(err))}


def write_profile(values: dict[str, float], source: str) -> None:
    from sandbox.profile import Profile, dump_profile

    dump_profile(Profile(name="a100-megatron", source=source, **values), PROFILE_OUT)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stride", type=int, default=2,
                    help="fit on every K-th single-node row (speed); errors use all rows")
    ap.add_argument("--iters", type=int, default=120, help="Nelder-Mead iterations per fit")
    ap.add_argument("--out", default=str(RESULTS / "vtrain_calibration"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = read_rows("vtrain_single_node.csv")
    folds = {w: [r for r in rows if r["hidden"] == w] for w in sorted({r["hidden"] for r in rows})}
    cv = {}
    for w, test in folds.items():
        train = [r for r in rows if r["hidden"] != w]
        values, _ = fit(train[:: args.stride], args.iters)
        cv[f"fit hidden!={w}, test hidden={w}"] = {"params": values, **errors(test, values)}
        print(f"fold hidden={w}: test MAPE {100 * cv[list(cv)[-1]]['mape']:.1f}%", flush=True)
    values, best = fit(rows[:: args.stride], args.iters)
    final = errors(rows, values)
    wall = time.perf_counter() - t0
    cmd = "python experiments/calibrate_vtrain_a100.py " + " ".join(argv or sys.argv[1:])
    source = (f"fitted by `{cmd.strip()}` to vTrain's 1,440 single-node A100 iteration times "
              f"(mean |log ratio| {best:.4f}; single-node MAPE {100 * final['mape']:.1f}%); "
              "other constants are sandbox/profile.py defaults")
    write_profile(values, source)
    cv_mape = statistics.fmean(c["mape"] for c in cv.values())
    out = Path(args.out)
    report = {"command": cmd, "machine": machine(("simpy", "numpy")), "wall_s": wall,
              "params": values, "start": {k: v for k, (_, v) in PARAMS.items()},
              "in_sample": final, "cross_validation": cv, "cv_mape": cv_mape,
              "profile": str(PROFILE_OUT.relative_to(ROOT))}
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    lines = ["# A100 + Megatron profile fitted to vTrain's single-node rows", "",
             f"- command: `{cmd.strip()}` ({wall:.0f} s on {report['machine']['cpu']})",
             f"- written: `{report['profile']}`", "",
             "| constant | start (default) | fitted |", "|---|---|---|"]
    lines += [f"| {k} | {PARAMS[k][1]:.4g} | {v:.4g} |" for k, v in values.items()]
    lines += ["", "| evaluation | rows | MAPE | max APE | mean signed |", "|---|---|---|---|---|",
              f"| in-sample, all single-node rows | {final['rows']} | "
              f"{100 * final['mape']:.1f}% | {100 * final['max_ape']:.1f}% | "
              f"{100 * final['mean_signed']:+.1f}% |"]
    lines += [f"| {k} | {c['rows']} | {100 * c['mape']:.1f}% | {100 * c['max_ape']:.1f}% | "
              f"{100 * c['mean_signed']:+.1f}% |" for k, c in cv.items()]
    lines += ["", f"Cross-validated single-node MAPE (mean of the folds): {100 * cv_mape:.1f}%. "
              "The multi-node rows are not used here; `experiments/validate_vtrain.py` "
              "tests the profile on them."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
