"""Simulator vs runtime on this machine: every plan it can run, calibrated first.

    python -m experiments.sim_vs_real [--profile experiments/results/cpu_profile.toml]
        [--calibrate] [--steps 6] [--models tiny,gpt-mini] [--only NAME,...]

1. Calibrate unless PROFILE exists and --calibrate is not given (then the
   committed profile is reused): twice in a row, `sandbox calibrate --out
   PROFILE.first.toml` then `--out PROFILE`, and report how well the two
   agree point by point (`runtime.calibrate.profile.agreement`); the
   second is the profile the predictions use.
2. Measure each plan (CPU: `tiny` and `gpt-mini` on 1 and 2 processes:
   dp 1, dp 2 with ZeRO 0 / 1 / 3, tp 2 with and without sequence
   parallelism, pp 2 with GPipe / 1F1B / interleaved 1F1B) with
   `runtime.observe.measure.measure` (`sandbox run` + one profiled step); the
   measurements are cached in `sim_vs_real_measured.json` (--remeasure runs
   them again), then predict each with the cluster naming PROFILE and once
   more without it (preset defaults) for reference, and combine them
   (`sandbox.compare.combine`, the same code as `sandbox compare`).
3. Write `experiments/results/sim_vs_real.json` and `.md`: machine, versions,
   command, per-plan predicted vs measured step time, relative error, the
   spread of the measured step times, and the load average while measuring.

Target (issue 6): median |error| of step time <= 20% over the gpt-mini plans
dp 1, dp 2, tp 2, pp 2, each <= 35%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments import provenance
from experiments.sim_vs_real_report import markdown

ROOT = provenance.ROOT

RESULTS = ROOT / "experiments" / "results"
PROFILE = RESULTS / "cpu_profile.toml"
TARGET = ("dp1", "dp2", "tp2", "pp2")  # the gpt-mini plans the target is about
BASE = {"micro_batch": 4, "global_batch": 16}

PLANS = {  # name -> [parallel] overrides (the world size is dp * tp * pp)
    "dp1": {},
    "dp2": {"dp": 2},
    "tp2": {"tp": 2},
    "pp2": {"pp": 2},
    "dp2-zero0": {"dp": 2, "zero": 0},
    "dp2-zero3": {"dp": 2, "zero": 3},
    "tp2-nosp": {"tp": 2, "sequence_parallel": False},
    "pp2-gpipe": {"pp": 2, "schedule": "gpipe"},
    "pp2-interleaved": {"pp": 2, "vpp": 2, "schedule": "interleaved-1f1b"},
}


def fit_vpp(model: str, overrides: dict) -> dict:
    """Interleaving needs pp * vpp to divide the layers: the smallest vpp >= the
    asked one that does (gpt-mini's 6 layers on pp 2: vpp 3)."""
    if "vpp" not in overrides:
        return overrides
    from sandbox.presets import MODELS

    layers, pp, v = MODELS[model]["layers"], overrides.get("pp", 1), overrides["vpp"]
    while layers % (pp * v) and pp * v < layers:
        v += 1
    return {**overrides, "vpp": v}


def plan_dict(model: str, overrides: dict, profile: str) -> dict:
    cluster = {"preset": "localhost"}
    if profile:
        cluster["profile"] = profile
    return {"model": {"preset": model}, "cluster": cluster,
            "parallel": {**BASE, **fit_vpp(model, overrides)},
            "train": {"lr": 1e-3, "lr_schedule": "constant", "warmup_steps": 0}}


def first_of(profile: Path) -> Path:
    """Where the first of the two calibrations goes: PROFILE.first.toml."""
    return profile.with_name(f"{profile.stem}.first{profile.suffix}")


def calibrate(profile: Path, device: str = "cpu") -> dict:
    """Two calibrations in a row (see the module docstring); their commands and
    wall times, and the first one's --json for the agreement check."""
    runs = []
    for out in (first_of(profile), profile):
        cmd = [sys.executable, "-m", "sandbox", "calibrate", "--device", device,
               "--out", str(out), "--json", str(out.with_suffix(".json"))]
        t = time.time()
        subprocess.run(cmd, check=True, cwd=ROOT)
        runs.append({"command": " ".join(["sandbox", *cmd[3:]]), "wall_s": time.time() - t})
    return {"runs": runs, "previous": str(first_of(profile).with_suffix(".json"))}


def coarsen(intervals: list, gap_s: float = 1e-3) -> list:
    """Intervals (s) with gaps shorter than `gap_s` closed, ends rounded to
    0.1 ms: enough for the timeline plots, a small cache file."""
    out: list[list[float]] = []
    for a, b in intervals:
        if out and a - out[-1][1] < gap_s:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [[round(a, 4), round(b, 4)] for a, b in out]


def measure_one(model: str, name: str, overrides: dict, steps: int, work: Path) -> dict:
    """Run and profile one plan (no simulator involved); a JSON-able dict. The
    profiled step's intervals are coarsened (`coarsen`) before caching; the
    breakdown was computed from the exact ones."""
    import sandbox
    from runtime.observe.measure import measure

    plan = sandbox.load(plan_dict(model, overrides, ""))
    t = time.time()
    m = measure(plan, work / f"{model}-{name}", steps=steps, progress=False).to_dict()
    for r in (m.get("profile") or {}).get("ranks", []):
        r["intervals_s"] = {k: coarsen(v) for k, v in r.get("intervals_s", {}).items()}
    return {**m, "wall_s": time.time() - t}


def profile_for_world(profile: Path, world: int) -> Path:
    """`sandbox calibrate --out P` writes P for one rank of a plan that fills the
    machine and P.pN.toml for one rank of N processes: pick the plan's."""
    side = profile.with_name(f"{profile.stem}.p{world}{profile.suffix}")
    return side if side.exists() else profile


def runs_of(entry: dict | list) -> list[dict]:
    """The cached measurements of one plan: a list of runs (an older cache held
    one run as a dict)."""
    return entry if isinstance(entry, list) else [entry]


def representative(runs: list[dict]) -> tuple[dict, float]:
    """(the run whose step time is closest to the median over runs, that median):
    the table's measured step time is the median over runs; the breakdown and
    timeline are the representative run's, scaled to it."""
    import copy

    steps = [r["measured"]["step_time_s"] for r in runs]
    med = statistics.median(steps)
    rep = copy.deepcopy(min(runs, key=lambda r: abs(r["measured"]["step_time_s"] - med)))
    scale = med / rep["measured"]["step_time_s"]
    m = rep["measured"]
    m["tokens_per_s"] = m["tokens_per_s"] / scale
    m["step_time_s"] = med
    m["breakdown_s"] = {k: v * scale for k, v in m.get("breakdown_s", {}).items()}
    return rep, med


def predict_one(model: str, name: str, overrides: dict, profile: str, runs: list[dict],
                plots: Path | None, other_profile: str = "") -> dict:
    """Simulate with and without the profile and compare with the measurement
    (the median over the plan's runs, see `representative`); with
    `other_profile` (the first of the two calibrations) predict once more with it."""
    import sandbox
    from runtime.observe.measure import Measurement
    from sandbox.compare import combine

    world = sandbox.load(plan_dict(model, overrides, "")).world_size
    profile = str(profile_for_world(Path(profile), world))
    plan = sandbox.load(plan_dict(model, overrides, profile))
    simres = sandbox.simulate(plan)
    uncal = sandbox.simulate(sandbox.load(plan_dict(model, overrides, ""))).to_dict()
    other = None
    if other_profile:
        alt = str(profile_for_world(Path(other_profile), world))
        other = sandbox.simulate(sandbox.load(plan_dict(model, overrides, alt))).step_time_s
    meas, measured = representative(runs)
    m = Measurement.from_dict({k: v for k, v in meas.items() if k != "wall_s"})
    out = plots / f"{model}-{name}" if plots else None
    d = combine(plan, simres, m, out).to_dict()
    per_run = [r["measured"]["step_time_s"] for r in runs]
    foreign = [r["provenance"].get("foreign_cores") for r in runs]
    return {
        "model": model, "plan": name, "parallel": fit_vpp(model, overrides),
        "world_size": plan.world_size,
        "predicted_step_s": d["predicted"]["step_time_s"],
        "predicted_uncalibrated_step_s": uncal["step_time_s"],
        "measured_step_s": measured, "error": d["error"]["step_time_s"],
        "error_uncalibrated": (uncal["step_time_s"] - measured) / measured,
        "predicted_first_calibration_step_s": other,
        "error_first_calibration": None if other is None else (other - measured) / measured,
        "runs_step_s": per_run, "runs_at": [r["provenance"]["date_utc"] for r in runs],
        "run_to_run_spread": (max(per_run) - min(per_run)) / measured,
        "noise": d["noise"], "breakdown_error": d["error"]["breakdown_s"],
        "predicted_breakdown_s": d["predicted"]["breakdown_s"],
        "measured_breakdown_s": d["measured"]["breakdown_s"],
        "peak_mem_error": d["error"]["peak_mem_gb"],
        "model_mem_error": d["error"].get("model_mem_gb"),
        "loadavg_1m": meas["provenance"]["loadavg_1m"],
        "foreign_cores": max((f for f in foreign if f is not None), default=None),
        "measured_at": meas["provenance"]["date_utc"], "wall_s": meas.get("wall_s"),
        "profile": Path(profile).name,
    }


def calibration_stats(profile: Path, previous: str) -> dict:
    """Spread of the profile's points and agreement with an earlier calibration."""
    import tomllib

    from runtime.calibrate.profile import _points, agreement, measurements, median_spread
    from runtime.calibrate.run import Calibration

    meas = tomllib.loads(profile.read_text()).get("measurements", {})
    if not meas:
        return {}
    out = {"wall_s": meas["wall_s"], "loadavg_1m": meas["machine"].get("loadavg_1m", 0.0),
           "date_utc": meas["machine"].get("date_utc", ""),
           "foreign_cores": meas["machine"].get("foreign_cores"),
           "points": len(_points(meas)), "median_spread": median_spread(meas)}
    if previous:
        prev_cal = Calibration.from_dict(json.loads(Path(previous).read_text()))
        prev = measurements(prev_cal)
        out["previous_foreign_cores"] = prev_cal.machine.get("foreign_cores")
        out["previous_loadavg_1m"] = prev_cal.machine.get("loadavg_1m")
        p = Path(previous).resolve()
        out["previous"] = str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p)
        # within the spread alone, and with 10% / 50% of the median added
        out["agreement_by_tolerance"] = {str(t): agreement(prev, meas, t)
                                         for t in (0.0, 0.1, 0.5)}
        out["agreement"] = out["agreement_by_tolerance"]["0.5"]
    return out


def summary(rows: list[dict], key: str = "error") -> dict:
    """The target over the gpt-mini plans dp1, dp2, tp2, pp2 for the errors in
    `key` ("error": the profile; "error_first_calibration": the first one)."""
    target = [r for r in rows if r["model"] == "gpt-mini" and r["plan"] in TARGET
              and r.get(key) is not None]
    errs = [abs(r[key]) for r in target]
    out = {"target_plans": [r["plan"] for r in target]}
    if errs:
        out.update(median_abs_error=statistics.median(errs), max_abs_error=max(errs),
                   meets_target=statistics.median(errs) <= 0.20 and max(errs) <= 0.35)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=str(PROFILE), help="calibration profile TOML")
    ap.add_argument("--calibrate", action="store_true", help="re-calibrate even if it exists")
    ap.add_argument("--remeasure", action="store_true",
                    help="run the plans again even if their measurements are cached")
    ap.add_argument("--more", action="store_true",
                    help="add new runs to the cached ones (the table takes the median)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="runs per plan in this invocation, round-robin over the plans")
    ap.add_argument("--steps", type=int, default=8,
                    help="runtime steps per plan (the first 2 are warm-up)")
    ap.add_argument("--models", default="tiny,gpt-mini")
    ap.add_argument("--only", default="", help="comma-separated plan names (default: all)")
    ap.add_argument("--out", default=str(RESULTS / "sim_vs_real"), help="results basename")
    ap.add_argument("--plots", default="", help="directory for per-plan compare.json + PNG")
    ap.add_argument("--previous", default="",
                    help="an earlier calibration's --json file to check reproducibility "
                         "(default: PROFILE.first.json when it exists)")
    args = ap.parse_args(argv)
    profile = Path(args.profile).resolve()
    rel = profile.relative_to(ROOT) if profile.is_relative_to(ROOT) else profile
    calib = {"reused": str(rel)}
    if args.calibrate or not profile.exists():
        calib = calibrate(profile)
    previous = args.previous or (str(first_of(profile).with_suffix(".json"))
                                 if first_of(profile).with_suffix(".json").exists() else "")
    out = Path(args.out)
    cache_path = out.with_name(out.name + "_measured.json")
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    names = [n for n in PLANS if not args.only or n in args.only.split(",")]
    todo = [(m, n) for m in args.models.split(",") for n in names]
    fresh: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):  # round-robin: each round measures every plan once
            for model, name in todo:
                key = f"{model}/{name}"
                if key in cache and not (args.remeasure or args.more):
                    continue
                print(f"== measure {key} (round {rnd + 1} of {args.rounds})", file=sys.stderr,
                      flush=True)
                try:
                    run = measure_one(model, name, PLANS[name], args.steps, Path(tmp))
                except Exception as e:  # a plan the runtime cannot do: report it
                    cache[key] = {"failed": f"{e.__class__.__name__}: "
                                            f"{(str(e).splitlines() or [''])[0][:200]}"}
                    cache_path.write_text(json.dumps(cache, indent=1) + "\n")
                    continue
                old = [] if (args.remeasure and key not in fresh) or "failed" in cache.get(
                    key, {"failed": ""}) else runs_of(cache[key])
                cache[key] = old + [run]
                fresh.add(key)
                cache_path.write_text(json.dumps(cache, indent=1) + "\n")
    rows = []
    plots = Path(args.plots) if args.plots else None
    first = str(first_of(profile)) if first_of(profile).exists() else ""
    for model, name in todo:
        meas = cache[f"{model}/{name}"]
        if "failed" in meas:
            rows.append({"model": model, "plan": name, "failed": meas["failed"]})
            continue
        try:
            rows.append(predict_one(model, name, PLANS[name], str(profile), runs_of(meas),
                                    plots, first))
        except Exception as e:  # the simulator cannot do it: report it
            rows.append({"model": model, "plan": name, "failed": f"simulate: "
                         f"{e.__class__.__name__}: {(str(e).splitlines() or [''])[0][:200]}"})
    meta = {"date_utc": provenance.utc_now(),
            "machine": provenance.machine(("torch", "simpy", "networkx")),
            "command": provenance.command("sim_vs_real", argv),
            "profile": str(rel), "calibration": calib, "steps": args.steps,
            "measurements": str(cache_path.relative_to(ROOT) if cache_path.is_relative_to(ROOT)
                                else cache_path)}
    meta["base_plan"] = plan_dict("MODEL", {}, "PROFILE")
    meta["calibration_stats"] = calibration_stats(profile, previous)
    summ = summary(rows)
    if first:
        summ["first_calibration"] = summary(rows, "error_first_calibration")
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "summary": summ,
                                                    "rows": rows}, indent=2) + "\n")
    page = markdown(meta, rows, summ, TARGET)
    out.with_suffix(".md").write_text(page)
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
