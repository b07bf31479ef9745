"""Synchronisation variants, stragglers, load balancing and data skew in the simulator.

Part 1: GPT-3 1.3B, pure data parallel on 32 A100s (4 x DGX A100, ZeRO 0,
global batch 256 x 2048 tokens, micro-batch 2), on the normal cluster (8 x
200 Gbit/s NICs per node) and on bandwidth-starved ones (1 x 25 and 1 x 10
Gbit/s per node): all-reduce, fp16 / int8 / top-k / PowerSGD compression,
local SGD every 4 and 16 steps, a parameter server (one per node, and a
single one), asynchronous SGD.

Part 2 (normal cluster): one slow GPU or 5% slow GPUs in pure data parallel,
with micro-batches rebalanced by speed and with async SGD; a slow GPU on one
pipeline stage (tp 2, pp 4, dp 4) with layers and micro-batches rebalanced
(`sim.balance`); data skew (replicas with 512..2048-token sequences) with
micro-batches rebalanced; half H100 and half A100 nodes.

Every number is a `sim.simulate` prediction with the clusters' profiles
(the A100 presets name `sandbox/profiles/a100-megatron.toml`); nothing is
fitted here.

    .venv/bin/python -m experiments.sync_variants_sim

Writes experiments/results/sync_variants_sim.md, .json and .png.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import sandbox
from experiments import provenance
from sim import balance, simulate  # noqa: E402

RESULTS = provenance.ROOT / "experiments" / "results"
MODEL = "gpt3-1.3b"
PAR = {"tp": 1, "pp": 1, "global_batch": 256, "micro_batch": 2, "zero": 0}
CLUSTERS = {"normal (8 x 200 Gbit/s)": {},
            "starved (1 x 25 Gbit/s)": {"nics_per_node": 1, "nic_gbit_per_s": 25.0},
            "starved (1 x 10 Gbit/s)": {"nics_per_node": 1, "nic_gbit_per_s": 10.0}}
VARIANTS = {
    "allreduce": {},
    "fp16": {"grad_compression": "fp16"},
    "int8": {"grad_compression": "int8"},
    "topk:0.01": {"grad_compression": "topk:0.01"},
    "topk:0.001": {"grad_compression": "topk:0.001"},
    "powersgd:4": {"grad_compression": "powersgd:4"},
    "powersgd:32": {"grad_compression": "powersgd:32"},
    "local-sgd k=4": {"dp_mode": "local-sgd", "sync_every": 4},
    "local-sgd k=16": {"dp_mode": "local-sgd", "sync_every": 16},
    "parameter-server (4)": {"dp_mode": "parameter-server"},
    "parameter-server (1)": {"dp_mode": "parameter-server", "ps_servers": 1},
    "async (4 servers)": {"dp_mode": "async"},
}
EXTRA = ("compression_ratio", "dp_bytes_per_gpu", "staleness_steps", "sync_every",
         "k_step_time_s", "averaging_s", "ps_servers", "simulated_replicas")


def load(cluster: dict | None = None, **par) -> sandbox.Plan:
    return sandbox.load({"model": {"preset": MODEL},
                         "cluster": {"preset": "dgx-a100-80g", "nodes": 4, **(cluster or {})},
                         "parallel": {**PAR, **par}})


def row(name: str, plan: sandbox.Plan, **options) -> dict:
    t = time.perf_counter()
    r = simulate(plan, timeline=False, **options)
    d = {"variant": name, "step_time_s": r.step_time_s, "tokens_per_s": r.tokens_per_s,
         "mfu": r.mfu, "dp_comm_s": r.breakdown_s["dp_comm"],
         "compute_s": r.breakdown_s["compute"], "fits": r.fits,
         "sim_wall_s": time.perf_counter() - t}
    d.update({k: r.extra[k] for k in EXTRA if k in r.extra})
    return d


def part1() -> dict:
    out = {}
    for cname, cl in CLUSTERS.items():
        rows = [row(v, load(cl, **par)) for v, par in VARIANTS.items()]
        base = rows[0]["tokens_per_s"]
        for r in rows:
            r["speedup"] = r["tokens_per_s"] / base
        out[cname] = rows
    return out


def _bal(name: str, plan: sandbox.Plan, before: bool = True) -> list[dict]:
    """The plan, and the plan with layers / micro-batches assigned by speed."""
    b = balance.balanced(plan)
    r1 = row(name + ", balanced", b)
    r1.update(stage_layers=list(b.parallel.stage_layers),
              replica_microbatches=list(b.parallel.replica_microbatches))
    return [row(name, plan), r1] if before else [r1]


def part2() -> dict:
    slow1 = {"slow_gpus": [13], "slow_gpu_slowdown": 2.0}
    slow5 = {"slow_gpu_fraction": 0.05, "slow_gpu_slowdown": 2.0, "variation_seed": 1}  # 2
    skew = [2048, 1024, 512, 2048, 1536, 1024, 2048, 768] * 4
    pp = {"tp": 2, "pp": 4, "micro_batch": 1, "global_batch": 64}
    mb1 = {"micro_batch": 1}  # 8 micro-batches per replica: room to rebalance
    mixed = {"node_gpus": ["h100-sxm", "h100-sxm", "a100-80g", "a100-80g"]}
    out = {
        "stragglers, pure data parallel (dp 32, micro-batch 1)": [
            row("no straggler", load(**mb1)), *_bal("1 GPU at 2x", load(slow1, **mb1)),
            row("1 GPU at 2x, async", load(slow1, dp_mode="async", **mb1)),
            *_bal("5% of GPUs at 2x", load(slow5, **mb1)),
            row("5% of GPUs at 2x, async", load(slow5, dp_mode="async", **mb1))],
        "slow GPU on pipeline stage 2 (tp 2, pp 4, dp 4, global batch 64)": [
            *_bal("no straggler", load(**pp)),
            *_bal("GPU 17 at 2x", load({"slow_gpus": [17], "slow_gpu_slowdown": 2.0}, **pp))],
        "data skew (sequence length per replica 512..2048, micro-batch 1)": [
            row("all 2048", load(**mb1)), *_bal("skewed", load(replica_seq_len=skew, **mb1))],
        "mixed GPUs (2 H100 nodes + 2 A100 nodes, dp 32, micro-batch 1)": [
            row("all A100", load(**mb1)), *_bal("mixed", load(mixed, **mb1))],
    }
    return out


def _fmt(x, nd=3) -> str:
    if isinstance(x, float):
        return f"{x:,.{nd}f}" if abs(x) < 1e5 else f"{x:,.0f}"
    return "" if x is None else str(x)


def markdown(res: dict) -> str:
    lines = ["# Synchronisation variants, stragglers and load balancing (simulator)", "",
             f"Model {MODEL}, {res['plan']}. Machine: {res['machine']['cpu']} "
             f"({res['machine']['cores']} cores), commit {res['machine']['git_commit']}, "
             f"load before: {res['load_before']}. Command: `{res['command']}` "
             f"({res['wall_s']:.1f} s).", ""]
    for cname, rows in res["sync_variants"].items():
        lines += [f"## {cname}", "",
                  "| variant | step (s) | tokens/s | vs allreduce | exposed DP comm (s) | "
                  "bytes sent / GPU / step | compression | staleness (updates) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            by = r.get("dp_bytes_per_gpu")
            lines.append(f"| {r['variant']} | {r['step_time_s']:.3f} | {r['tokens_per_s']:,.0f} | "
                         f"{r['speedup']:.2f}x | {r['dp_comm_s']:.3f} | "
                         f"{'' if by is None else f'{by / 1e9:.3f} GB'} | "
                         f"{_fmt(r.get('compression_ratio'), 1)} | "
                         f"{_fmt(r.get('staleness_steps'), 1)} |")
        lines.append("")
    for title, rows in res["balance"].items():
        lines += [f"## {title}", "", "| case | step (s) | tokens/s | MFU | assignment |",
                  "|---|---:|---:|---:|---|"]
        for r in rows:
            a = []
            if r.get("stage_layers"):
                a.append(f"layers {r['stage_layers']}")
            if r.get("replica_microbatches"):
                mb = r["replica_microbatches"]
                a.append(f"micro-batches {min(mb)}..{max(mb)}")
            if "staleness_steps" in r:
                a.append(f"staleness {r['staleness_steps']:.1f}")
            lines.append(f"| {r['variant']} | {r['step_time_s']:.3f} | {r['tokens_per_s']:,.0f} | "
                         f"{r['mfu']:.1%} | {'; '.join(a)} |")
        lines.append("")
    lines += ["Notes: local SGD's step is amortised: (k x local step + averaging) / k; "
              "async's is the time per 256 sequences at its steady-state rate (no barrier), "
              "its staleness the mean number of server updates between a worker's pull and "
              "its own update; it does not overlap pulls and pushes with compute, the "
              "synchronous parameter server and all-reduce overlap them with the backward. "
              "The parameter server is flat: every GPU pushes its own gradients to the "
              "servers over its node's NICs (no intra-node aggregation first, unlike "
              "BytePS), which is why it trails the ring on the starved clusters. "
              "Bytes sent: the data-parallel gradient traffic one GPU puts on "
              "the wire per step (parameter server: the push). Profile: the A100 preset's "
              "calibrated one (sandbox/profiles/a100-megatron.toml); the ranking and ratios "
              "are the result more than the absolute times.",
              ""]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [3, 2]})
    ax = axes[0]
    names = list(VARIANTS)
    width = 0.8 / len(res["sync_variants"])
    for i, (cname, rows) in enumerate(res["sync_variants"].items()):
        ax.bar(np.arange(len(names)) + (i - 1) * width, [r["tokens_per_s"] / 1e3 for r in rows],
               width, label=cname)
    ax.set_xticks(np.arange(len(names)), names, rotation=40, ha="right")
    ax.set_ylabel("thousand tokens / s")
    ax.set_yscale("log")
    ax.set_title(f"{MODEL}, 32 A100s, pure data parallel", pad=30)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    ax = axes[1]
    labels, vals, colors = [], [], []
    short = ("DP straggler", "PP straggler", "skew", "mixed GPUs")
    for tag, rows in zip(short, res["balance"].values(), strict=True):
        for r in rows:
            labels.append(f"{tag}: {r['variant']}")
            vals.append(r["tokens_per_s"] / 1e3)
            colors.append("#55a868" if "balanced" in r["variant"] else
                          "#c44e52" if "async" in r["variant"] else "#4c72b0")
    y = np.arange(len(labels))
    ax.barh(y, vals, color=colors)
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("thousand tokens / s (green: balanced, red: async)")
    ax.set_title("stragglers, skew, mixed GPUs (normal cluster)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    t = time.perf_counter()
    load_before = provenance.load_average()
    res = {"plan": "dgx-a100-80g x 4 nodes, dp 32 unless noted, global batch 256, "
                   "micro-batch 2, ZeRO 0, bf16",
           "machine": provenance.machine(("numpy", "simpy", "networkx", "matplotlib")),
           "load_before": [round(x, 2) for x in load_before],
           "command": provenance.command("sync_variants_sim", []),
           "sync_variants": part1(), "balance": part2()}
    res["wall_s"] = provenance.wall_s(t)
    res["load_after"] = [round(x, 2) for x in provenance.load_average()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sync_variants_sim.json").write_text(json.dumps(res, indent=1))
    md = markdown(res)
    (RESULTS / "sync_variants_sim.md").write_text(md)
    plot(res, RESULTS / "sync_variants_sim.png")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
