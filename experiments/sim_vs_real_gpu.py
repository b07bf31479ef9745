"""Simulator vs runtime on one GPU: single-GPU plans from gpt2-124m to gpt3-1.3b.

    python -m experiments.sim_vs_real_gpu [--profile experiments/results/gpu_profile.toml]
        [--calibrate] [--models gpt2-124m,gpt2-350m,gpt3-1.3b] [--shapes mb1,mb4,mb8,mb16-s4]
        [--steps 10] [--remeasure]

Issue 6's GPU target: with the profile of `sandbox calibrate --device cuda`,
the step-time error of every plan is at most 10%.

1. Calibrate twice in a row unless PROFILE exists or --calibrate is given
   (`sandbox calibrate --device cuda --out PROFILE.first.toml`, then
   `--out PROFILE`; `sim_vs_real.calibrate`), and report how well the two
   agree point by point.
2. Plans: each model x batch shape (`SHAPES`: micro-batch 1, 4 and 8 at the
   model's sequence length, micro-batch 16 at a quarter of it), on the
   `localhost` cluster naming PROFILE, dp = tp = pp = 1, two micro-batches
   per step (gradient accumulation), bf16. A plan the memory model says
   does not fit is listed as skipped, not run. Each plan runs `--steps`
   steps through `sandbox run`'s path (`runtime.observe.measure.measure`); the
   measurements are cached in RESULTS/OUT_measured.json, so the list can be
   split over several commands (`--models`).
3. Predict each with the profile and without it (documented defaults),
   combine (`sandbox.compare.combine`), and write OUT.md and OUT.json:
   machine, versions, command, per-plan predicted vs measured step time,
   error, spread of the measured steps, peak memory.

`--device cpu` runs the same pipeline on this machine's CPU (fp32, the CPU
profile): a smoke test of the script, not a GPU result.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from experiments import provenance
from experiments.sim_vs_real import (
    RESULTS,
    calibrate,
    calibration_stats,
    first_of,
    profile_for_world,
)
from experiments.sim_vs_real_report import pct

MODELS = ("gpt2-124m", "gpt2-350m", "gpt3-1.3b")
SHAPES = {"mb1": (1, 1.0), "mb4": (4, 1.0), "mb8": (8, 1.0), "mb16-s4": (16, 0.25)}
ACCUMULATION = 2  # micro-batches per step
TARGET = 0.10  # |step-time error| of every plan


def plan_dict(model: str, shape: str, profile: str, device: str) -> dict:
    """One single-device plan of `model` in batch shape `shape` (`SHAPES`)."""
    from sandbox.presets import MODELS as PRESETS

    mb, seq_frac = SHAPES[shape]
    cluster = {"preset": "localhost", **({"profile": profile} if profile else {})}
    return {"model": {"preset": model,
                      "seq_len": max(8, int(PRESETS[model]["seq_len"] * seq_frac))},
            "cluster": cluster,
            "parallel": {"micro_batch": mb, "global_batch": mb * ACCUMULATION},
            "train": {"precision": "bf16" if device == "cuda" else "fp32",
                      "lr": 1e-4, "lr_schedule": "constant", "warmup_steps": 0}}


def measure_one(model: str, shape: str, device: str, steps: int, work: Path) -> dict:
    """Run one plan (no simulator involved); a JSON-able dict, or why it was skipped."""
    import sandbox
    from runtime.observe.measure import measure
    from sandbox.memory import fits, memory_per_gpu

    plan = sandbox.load(plan_dict(model, shape, "", device))
    if not fits(plan):  # the same check `sandbox run` makes (runtime.launch.check_memory)
        return {"skipped": f"does not fit: {memory_per_gpu(plan)['total']:.1f} GB predicted, "
                           f"{plan.cluster.gpu.hbm_gb} GB on the device"}
    t = time.time()
    m = measure(plan, work / f"{model}-{shape}", steps=steps, progress=False).to_dict()
    return {**m, "wall_s": time.time() - t}


def predict_one(model: str, shape: str, device: str, profile: Path, meas: dict) -> dict:
    """Simulate with and without the profile and compare with the measurement."""
    import sandbox
    from runtime.observe.measure import Measurement
    from sandbox.compare import combine

    prof = str(profile_for_world(profile, 1))
    plan = sandbox.load(plan_dict(model, shape, prof, device))
    uncal = sandbox.simulate(sandbox.load(plan_dict(model, shape, "", device))).step_time_s
    m = Measurement.from_dict({k: v for k, v in meas.items() if k != "wall_s"})
    d = combine(plan, sandbox.simulate(plan), m, plot=False).to_dict()
    measured = d["measured"]["step_time_s"]
    return {"model": model, "shape": shape, "micro_batch": plan.parallel.micro_batch,
            "seq_len": plan.model.seq_len, "tokens_per_step": plan.parallel.global_batch
            * plan.model.seq_len, "predicted_step_s": d["predicted"]["step_time_s"],
            "predicted_uncalibrated_step_s": uncal, "measured_step_s": measured,
            "error": d["error"]["step_time_s"], "error_uncalibrated": (uncal - measured) / measured,
            "noise": d["noise"], "predicted_mem_gb": d["predicted"]["peak_mem_gb"],
            "measured_mem_gb": d["measured"]["peak_mem_gb"],
            "mem_error": d["error"]["peak_mem_gb"], "profile": Path(prof).name,
            "measured_at": meas["provenance"]["date_utc"], "wall_s": meas.get("wall_s")}


def summary(rows: list[dict]) -> dict:
    errs = [abs(r["error"]) for r in rows if r.get("error") is not None]
    if not errs:
        return {"plans": 0}
    return {"plans": len(errs), "median_abs_error": statistics.median(errs),
            "max_abs_error": max(errs), "meets_target": max(errs) <= TARGET}


def markdown(meta: dict, rows: list[dict], summ: dict) -> str:
    m = meta["machine"]
    lines = [f"# Simulator vs runtime on one device ({meta['device']})", "",
             f"- date (UTC): {meta['date_utc']}; host {m['host']}: "
             f"{m.get('gpu') or m['cpu']}; Python {m['python']}, torch {m['versions']['torch']}"
             + (f", CUDA {m['cuda']}, NCCL {m['nccl']}" if m.get("cuda") else ""),
             f"- command: `{meta['command']}`",
             f"- profile: `{meta['profile']}` ({meta['calibration']})",
             f"- plan: `localhost` cluster naming the profile, dp = tp = pp = 1, "
             f"{ACCUMULATION} micro-batches per step, "
             f"{'bf16' if meta['device'] == 'cuda' else 'fp32'}; shape `mbB` = micro-batch B "
             "at the model's sequence length, `mbB-s4` at a quarter of it; step time = median "
             "after 2 warm-up steps of `sandbox run`", "",
             "| model | shape | tokens/step | predicted (s) | predicted, no profile (s) "
             "| measured (s) | spread | error | error, no profile | memory pred / meas (GB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" not in r:
            lines.append(f"| {r['model']} | {r['shape']} | - | - | - | - | - "
                         f"| {r.get('skipped') or r.get('failed')} | - | - |")
            continue
        n, mm = r["noise"], r["measured_mem_gb"]
        lines.append(f"| {r['model']} | {r['shape']} | {r['tokens_per_step']:,} "
                     f"| {r['predicted_step_s']:.4g} | {r['predicted_uncalibrated_step_s']:.4g} "
                     f"| {r['measured_step_s']:.4g} | {100 * n.get('range_rel', 0):.0f}% "
                     f"| {pct(r['error'])} | {pct(r['error_uncalibrated'])} "
                     f"| {r['predicted_mem_gb']:.1f} / {'-' if mm is None else f'{mm:.1f}'} |")
    cal = meta.get("calibration_stats") or {}
    if cal.get("agreement"):
        a = cal["agreement_by_tolerance"]
        lines += ["", f"Calibration: {cal['wall_s']:.0f} s, {cal['points']} points, median "
                  f"spread {100 * cal['median_spread']:.0f}%; against the one before it: "
                  + ", ".join(f"{100 * x['agree_fraction']:.0f}% of points within the spread"
                              + (f" + {100 * float(t):.0f}%" if float(t) else "")
                              for t, x in a.items())]
    lines += ["", f"## Target: every plan within {100 * TARGET:.0f}%", ""]
    lines.append(f"{summ['plans']} plans: median |error| {100 * summ['median_abs_error']:.1f}%, "
                 f"max {100 * summ['max_abs_error']:.1f}%: "
                 f"{'met' if summ['meets_target'] else 'NOT met'}."
                 if summ["plans"] else "no plan measured.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--profile", default=str(RESULTS / "gpu_profile.toml"))
    ap.add_argument("--calibrate", action="store_true", help="re-calibrate even if it exists")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--steps", type=int, default=10, help="steps per plan (2 are warm-up)")
    ap.add_argument("--remeasure", action="store_true", help="ignore cached measurements")
    ap.add_argument("--out", default=str(RESULTS / "sim_vs_real_gpu"), help="results basename")
    args = ap.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("sim_vs_real_gpu: no CUDA device visible; run it on the GPU machine "
              "(or --device cpu for a smoke test)", file=sys.stderr)
        return 2
    bad = [s for s in args.shapes.split(",") if s not in SHAPES]
    if bad:
        print(f"sim_vs_real_gpu: unknown shape {bad[0]!r}; choose from {', '.join(SHAPES)}",
              file=sys.stderr)
        return 2
    profile = Path(args.profile).resolve()
    calib = {"reused": profile.name}
    if args.calibrate or not profile.exists():
        calib = calibrate(profile, args.device)
    out = Path(args.out)
    cache_path = out.with_name(out.name + "_measured.json")
    cache = {} if args.remeasure or not cache_path.exists() else json.loads(
        cache_path.read_text())
    todo = [(m, s) for m in args.models.split(",") for s in args.shapes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for model, shape in todo:
            key = f"{model}/{shape}"
            if key in cache:
                continue
            print(f"== measure {key}", file=sys.stderr, flush=True)
            try:
                cache[key] = measure_one(model, shape, args.device, args.steps, Path(tmp))
            except Exception as e:  # a plan the runtime cannot do: report it
                cache[key] = {"failed": f"{e.__class__.__name__}: "
                                        f"{(str(e).splitlines() or [''])[0][:200]}"}
            cache_path.write_text(json.dumps(cache, indent=1) + "\n")
    rows = []
    for model, shape in todo:
        meas = cache[f"{model}/{shape}"]
        rows.append({"model": model, "shape": shape, **meas} if "measured" not in meas
                    else predict_one(model, shape, args.device, profile, meas))
    summ = summary(rows)
    prev = first_of(profile).with_suffix(".json")
    meta = {"device": args.device,
            "machine": provenance.machine(("torch", "simpy", "networkx"), args.device),
            "date_utc": provenance.utc_now(),
            "command": provenance.command("sim_vs_real_gpu", argv),
            "profile": profile.name, "calibration": calib,
            "calibration_stats": calibration_stats(profile, str(prev) if prev.exists() else "")}
    out.with_suffix(".json").write_text(json.dumps(
        {"meta": meta, "summary": summ, "rows": rows}, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(meta, rows, summ))
    print(markdown(meta, rows, summ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
