"""sandbox presets [--json]"""

from __future__ import annotations

import argparse
import json

HELP = "list the model, GPU and cluster presets"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print every preset's fields as JSON")


def main(args: argparse.Namespace) -> int:
    from sandbox import counts, presets
    from sandbox import units as u
    from sandbox.planfile import load

    if args.json:
        print(json.dumps({"models": presets.MODELS, "gpus": presets.GPUS,
                          "clusters": {**presets.CLUSTERS,
                                       "localhost": presets.localhost_cluster()}},
                         indent=2, default=str))
        return 0
    print("models:")
    for name in presets.MODELS:
        m = load({"model": {"preset": name}}).model
        moe = (f"  {m.experts} experts top-{m.experts_per_token}, "
               f"{u.params(counts.active_params(m))} active" if m.experts else "")
        print(f"  {name:<15} {u.params(counts.param_count(m)):>7} params  layers {m.layers:>3}"
              f"  hidden {m.hidden:>6}  heads {m.heads:>3}/{m.kv_heads:<3} vocab {m.vocab:>6}"
              f"  seq {m.seq_len:>5}  {m.activation} {m.kind}{moe}")
    print("gpus:")
    for name, g in presets.GPUS.items():
        print(f"  {name:<12} bf16 {g['tflops_bf16']:7.1f} TFLOP/s  {u.gib(g['hbm_gb']):>9}  "
              f"{g['hbm_gb_per_s']:6.0f} GB/s")
    print("clusters:")
    for name, c in presets.CLUSTERS.items():
        print(f"  {name:<16} {c['nodes']} x {c['gpus_per_node']} x {c['gpu']}  "
              f"{c['intra_node_link']} {c['intra_node_gb_per_s']:.0f} GB/s  "
              f"{c['nics_per_node']} x {c['nic_gbit_per_s']:.0f} Gb/s {c['topology']}")
    local = presets.localhost_cluster()
    gpu = local["gpu"] if isinstance(local["gpu"], str) else local["gpu"]["name"]
    print(f"  {'localhost':<16} this machine: {gpu} (gpus_per_node = processes)")
    return 0
