"""Simulator speed: wall time and events per second for plans of 8 to 16,384 GPUs.

Each plan is simulated `--repeats` times in this process (the first call
also builds the cluster's topology graph; later calls reuse it, as a
strategy search does); the table reports the first and the median of the
rest. The target plan of issue 3 is the 1T-parameter model on 512 GPUs
(TP 8 x PP 64, 512 microbatches).

    python -m experiments.bench_sim_speed [--repeats N] [--only NAME,...]

Writes experiments/results/sim_speed.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from experiments import provenance

RESULTS = provenance.ROOT / "experiments" / "results"
# name -> (model, cluster, nodes, parallel)
PLANS = {
    "1.3b-8gpu": ("gpt3-1.3b", "dgx-a100-80g", 1,
                  {"tp": 2, "pp": 2, "global_batch": 64, "schedule": "1f1b"}),
    "1.3b-64gpu": ("gpt3-1.3b", "dgx-a100-80g", 8,
                   {"tp": 1, "pp": 1, "global_batch": 512, "micro_batch": 4}),
    "1t-512gpu": ("megatron-1t", "dgx-a100-80g", 64,
                  {"tp": 8, "pp": 64, "global_batch": 512, "micro_batch": 1,
                   "schedule": "1f1b"}),
    "175b-1024gpu": ("gpt3-175b", "dgx-a100-80g", 128,
                     {"tp": 8, "pp": 16, "vpp": 3, "global_batch": 1536,
                      "schedule": "interleaved-1f1b"}),
    "175b-4096gpu": ("gpt3-175b", "dgx-a100-80g", 512,
                     {"tp": 8, "pp": 16, "global_batch": 4096, "schedule": "1f1b"}),
    # experiments/plans/llama3-405b-16k.toml: Llama 3's layout, 128 even layers
    "405b-16384gpu": ("llama3-405b", "dgx-h100", 2048,
                      {"tp": 8, "pp": 16, "vpp": 2, "global_batch": 2048,
                       "schedule": "interleaved-1f1b", "recompute": "full"}),
}


def plan_of(name: str):
    import sandbox

    model, cluster, nodes, par = PLANS[name]
    layers = {"layers": 128} if model == "llama3-405b" else {}
    return sandbox.load({"model": {"preset": model, **layers},
                         "cluster": {"preset": cluster, "nodes": nodes},
                         "parallel": {"micro_batch": 1, "zero": 1, **par}})


def bench(name: str, repeats: int) -> dict:
    from sim import simulate

    plan = plan_of(name)
    walls, res = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = simulate(plan, timeline=False)
        walls.append(time.perf_counter() - t0)
    p = plan.parallel
    rest = walls[1:] or walls
    return {"plan": name, "gpus": plan.world_size, "model": plan.model.name,
            "tp": p.tp, "pp": p.pp, "dp": p.dp, "vpp": p.vpp, "schedule": p.schedule,
            "microbatches": p.microbatches, "events": res.events,
            "first_wall_s": walls[0], "wall_s": statistics.median(rest),
            "events_per_s": res.events / statistics.median(rest),
            "step_time_s": res.step_time_s, "mfu": res.mfu}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated plan names")
    ap.add_argument("--out", default=str(RESULTS / "sim_speed"))
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else list(PLANS)
    load = provenance.load_average()
    rows = []
    for name in names:
        rows.append(bench(name, args.repeats))
        r = rows[-1]
        print(f"{name:15} {r['gpus']:6d} GPUs {r['events']:8,d} events  "
              f"first {r['first_wall_s']:6.2f} s  median {r['wall_s']:6.2f} s  "
              f"{r['events_per_s']:9,.0f} ev/s", flush=True)
    meta = {"command": provenance.command("bench_sim_speed", argv),
            "machine": provenance.machine(("simpy", "networkx", "numpy")),
            "loadavg_before": load, "loadavg_after": provenance.load_average(),
            "repeats": args.repeats}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    m = meta["machine"]
    lines = ["# Simulator speed", "",
             f"- command: `{meta['command'].strip()}`",
             f"- machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, "
             f"simpy {m['versions']['simpy']}, commit {m['git_commit']}",
             f"- load average (1 min) before / after: {load[0]:.2f} / "
             f"{meta['loadavg_after'][0]:.2f}",
             "- one optimizer step simulated (`sim.simulate(plan, timeline=False)`); "
             "first call includes building the topology graph, median over the other "
             f"{args.repeats - 1} calls", "",
             "| plan | GPUs | TP x PP x DP | schedule | microbatches | events | first (s) "
             "| median (s) | events/s | step (s) | MFU |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['plan']} | {r['gpus']:,} | {r['tp']} x {r['pp']} x {r['dp']} "
                     f"| {r['schedule']} | {r['microbatches']} | {r['events']:,} "
                     f"| {r['first_wall_s']:.2f} | {r['wall_s']:.2f} | {r['events_per_s']:,.0f} "
                     f"| {r['step_time_s']:.2f} | {r['mfu']:.3f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
