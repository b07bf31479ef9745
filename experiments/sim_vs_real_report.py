"""Markdown page of `experiments.sim_vs_real` (`sim_vs_real.md`): what each
plan measured and what the simulator predicted, the calibration's spread and
reproducibility, and the target."""

from __future__ import annotations

import json


def cores(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}%"


def markdown(meta: dict, rows: list[dict], summ: dict, target: tuple[str, ...]) -> str:
    """The results page: per-plan table, calibration, method, the target over the
    gpt-mini plans named in `target`, and the breakdown errors."""
    m = meta["machine"]
    lines = [
        "# Simulator vs runtime on this machine (CPU, gloo)", "",
        f"- date (UTC): {meta['date_utc']}; host {m['host']}: {m['cpu']}, {m['cores']} cores; "
        f"Python {m['python']}, torch {m['versions']['torch']}",
        f"- command: `{meta['command']}`",
        f"- profile: `{meta['profile']}` ({meta['calibration']})",
        f"- runtime: `sandbox.compare` = `sandbox run` for {meta['steps']} steps, step time = "
        "median after 2 warm-up steps; plus one torch.profiler step for the breakdown; a plan "
        "measured in several runs (at different times, round-robin over the plans) has the "
        "median over its runs as measured step time, each run's in `runs`",
        f"- base plan: `{json.dumps(meta['base_plan'])}`",
        "- spread = (max - min) / median of the measured steps after warm-up (in the run "
        "closest to the median); runs: each run's median step time; load = 1-minute "
        "load average before / after the plan; other jobs = cores kept busy by processes other "
        "than the measurement while it ran (/proc/stat minus the measurement's own CPU time: "
        "0 = quiet, 1 = one of the 2 cores taken)",
        "",
        "| model | plan | world | predicted (s) | predicted, no profile (s) | measured (s) "
        "| spread | runs (s) | error | error, no profile | load | other jobs (cores) | profile "
        "| measured at (UTC) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['model']} | {r['plan']} | - | - | - | - | - | - | failed: "
                         f"{r['failed']} | - | - | - | - | - |")
            continue
        n = r["noise"]
        lines.append(
            f"| {r['model']} | {r['plan']} | {r['world_size']} | {r['predicted_step_s']:.4g} "
            f"| {r['predicted_uncalibrated_step_s']:.4g} | {r['measured_step_s']:.4g} "
            f"| {100 * n.get('range_rel', 0):.0f}% ({n.get('steps')} steps) "
            f"| {', '.join(f'{x:.3g}' for x in r.get('runs_step_s', [r['measured_step_s']]))} "
            f"| {pct(r['error'])} | {pct(r['error_uncalibrated'])} "
            f"| {r['loadavg_1m'][0]:.1f} / {r['loadavg_1m'][1]:.1f} "
            f"| {cores(r.get('foreign_cores'))} | {r['profile']} "
            f"| {r['measured_at'][11:19]} |")
    cal = meta.get("calibration_stats") or {}
    if cal:
        lines += ["", "## Calibration", "",
                  f"- `{meta['profile']}` (+ `.p1.toml` for one-process plans), calibrated at "
                  f"{cal.get('date_utc', '?')}: "
                  f"{cal['wall_s']:.0f} s of measurement at load {cal['loadavg_1m']:.1f} "
                  f"(other jobs {cores(cal.get('foreign_cores'))} cores), "
                  f"{cal['points']} points; median spread (IQR / median) over points "
                  f"{100 * cal['median_spread']:.0f}%"]
        if cal.get("agreement"):
            a = cal["agreement"]
            by = cal.get("agreement_by_tolerance", {})
            within = ", ".join(f"{100 * x['agree_fraction']:.0f}% within the spread"
                               + (f" + {100 * float(t):.0f}% of the median" if float(t) else "")
                               for t, x in by.items()) or (
                f"{100 * a['agree_fraction']:.0f}% within the spread + "
                f"{100 * a['tolerance']:.0f}%")
            lines.append(f"- reproducibility, against the calibration just before it "
                         f"(`{cal['previous']}`): {a['points']} common points; {within} "
                         "(two medians agree when they differ by at most the sum of their "
                         "inter-quartile ranges, plus the stated share of the larger median); "
                         f"median |log ratio| {a['median_abs_log_ratio']:.2f}, 90th "
                         f"percentile {a['p90_abs_log_ratio']:.2f}")
    lines += ["", "## Method", "",
              "- Every number the simulator uses for these plans comes from the profile "
              "(`sandbox calibrate` on this machine); none is set by hand. The 'no profile' "
              "column uses the documented defaults (`sandbox.profile.Profile()`).",
              "- Kernels (the models' GEMM shapes, SDPA attention, memory-bound ops, AdamW) are "
              "timed with the threads a rank of `sandbox run` gets (OMP_NUM_THREADS, 1): alone "
              "for one-process plans (`.p1.toml`), on 2 processes at once in lockstep for "
              "two-process plans; GEMMs unpadded (`gemm_tile = [1, 1, 1]`), attention fused "
              "(`attention_fused = true`: no separate softmax pass over s x s scores).",
              "- Whole layers are timed as the runtime runs them (plain; DTensor tensor-"
              "parallel with and without sequence parallelism) with their AdamW step "
              "(`[[compute.block]]`); for a plan with such a layer the simulator scales its "
              "kernel sum so that kernels + modelled TP communication take the measured time, "
              "and uses the measured AdamW step (`sim.compute.calibrated_layer`).",
              "- Collectives: gloo alpha-beta fits per op and group size (2)."]
    lines += ["", "## Target: gpt-mini dp 1, dp 2, tp 2, pp 2", ""]
    if "median_abs_error" in summ:
        lines.append(f"median |error| {100 * summ['median_abs_error']:.1f}% (target <= 20%), "
                     f"max {100 * summ['max_abs_error']:.1f}% (target <= 35%): "
                     f"{'met' if summ['meets_target'] else 'NOT met'}.")
        f = summ.get("first_calibration", {})
        if "median_abs_error" in f:
            lines += ["", "Predicted with each of the two calibrations taken in a row (the "
                      "second is the profile above; the difference is how reproducible a "
                      "calibration is on this machine):", "",
                      "| plan | measured (s) | predicted, 1st (s) | error, 1st | predicted, 2nd "
                      "(s) | error, 2nd | 2nd / 1st |", "|---|---|---|---|---|---|---|"]
            for r in rows:
                if r.get("model") == "gpt-mini" and r.get("plan") in target and "error" in r:
                    a, b = r["predicted_first_calibration_step_s"], r["predicted_step_s"]
                    lines.append(f"| {r['plan']} | {r['measured_step_s']:.4g} | {a:.4g} "
                                 f"| {pct(r['error_first_calibration'])} | {b:.4g} "
                                 f"| {pct(r['error'])} | {b / a:.2f} |")
            lines += ["", f"With the 1st calibration: median |error| "
                      f"{100 * f['median_abs_error']:.1f}%, max {100 * f['max_abs_error']:.1f}%: "
                      f"{'met' if f['meets_target'] else 'NOT met'}."]
    else:
        lines.append("not measured.")
    lines += ["", "## Breakdown error (profiled step vs simulator, relative)", "",
              "| model | plan | " + " | ".join(("compute", "tp_comm", "dp_comm",
                                                 "pp_comm+bubble", "optimizer")) + " |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "failed" in r:
            continue
        b = r["breakdown_error"]
        lines.append(f"| {r['model']} | {r['plan']} | " + " | ".join(
            pct(b.get(k)) for k in ("compute", "tp_comm", "dp_comm", "pp_comm+bubble",
                                     "optimizer")) + " |")
    return "\n".join(lines) + "\n"
