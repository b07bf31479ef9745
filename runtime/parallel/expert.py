"""Expert parallelism (and the MoE block's tensor parallelism), torchtitan-style.

Layout (`sandbox.layout.ep_groups` / `expert_grad_groups`): the routed
experts of every MoE block are split over groups of `ep` consecutive
data-parallel replicas; replica d keeps experts [(d % ep) L, (d % ep + 1) L)
with L = experts / ep. The 4-D mesh (pp, edp, ep, tp) (`expert_mesh`) reshapes
dp into (dp / ep, ep), so its "ep" dimension is an EP group and "edp" the
expert-data-parallel group holding the same expert shard.

- Dispatch / combine (`runtime.parallel.expert_dispatch`, what the MoE block
  calls): each rank sorts its token-expert pairs by expert, exchanges the
  per-expert counts (`all_to_all_single` of E integers), sends every pair's
  hidden vector to the rank owning its expert and gets the outputs back by
  the reverse all-to-all (autograd-aware: backward is the all-to-all with the
  splits swapped). gloo runs it on CPU.
- Expert tensor parallelism = tp (like the dense FFN): w1 / w3 (fc1) split
  column-wise and w2 (fc2) row-wise on the expert width, partial outputs
  all-reduced over tp (Megatron's f / g operators `copy_to_tp` /
  `reduce_from_tp`); the router is replicated; shared experts use DTensor
  colwise / rowwise like the dense FFN. Under sequence parallelism the tokens
  are gathered over tp before routing and split again after.
- Weights: the routed experts become DTensors on the (ep, tp) sub-mesh
  (Shard(0) over ep, Shard(width) over tp), cut from the full tensors every
  rank initialised from the seed, so every layout starts from the
  single-process weights and checkpoints (DCP) hold the full [experts, ...]
  tensors under the GPT names.
- Gradients: dense parameters are reduced over dp by DDP / FSDP2 as before;
  the routed experts are left out of them (`ignored` parameters) and
  `reduce_expert_grads` SUMS each expert shard's gradient over its edp group
  and divides by dp: the global loss is the mean over the dp replicas, and a
  shard's gradient already sums the contributions of its EP group's tokens.
  With ZeRO 1-3 the routed experts therefore stay replicated over edp
  (unsharded weights and optimizer states); only the dense part is sharded.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from runtime.layers.moe import MoE
from runtime.parallel.expert_dispatch import ExpertGroups
from sandbox.layout import ep_groups
from sandbox.specs import Plan


# ------------------------------------------------------------ apply to a model
def expert_mesh(plan: Plan, device_type: str) -> DeviceMesh:
    """The (pp, edp, ep, tp) mesh: dp reshaped into (dp / ep, ep). Collective."""
    p = plan.parallel
    mesh = init_device_mesh(device_type, (p.pp, p.dp // p.ep, p.ep, p.tp),
                            mesh_dim_names=("pp", "edp", "ep", "tp"))
    stage = mesh.get_local_rank("pp")
    rows = mesh.mesh[stage].movedim(1, -1).reshape(-1, p.ep).tolist()
    if sorted(map(tuple, rows)) != sorted(ep_groups(plan, stage)):
        raise RuntimeError(f"expert_mesh: ep groups {rows} differ from sandbox.layout "
                           f"{ep_groups(plan, stage)}")
    return mesh


def _width_dim(name: str) -> int | None:
    """Dimension of a grouped expert weight split over tp (None: replicated)."""
    if name in ("w1", "w3", "fc1"):
        return 2
    if name in ("w2", "fc2"):
        return 1
    return None if name in ("w2_bias", "fc2_bias") else 1  # up-projection biases


def _replicate(module: nn.Module, mesh: DeviceMesh) -> None:
    """A replicated module over tp taking and returning local tensors."""

    def inputs(_m: nn.Module, args: Any, mesh: DeviceMesh) -> tuple:
        return tuple(DTensor.from_local(a, mesh, [Replicate()], run_check=False) for a in args)

    distribute_module(module, mesh, input_fn=inputs,
                      output_fn=lambda _m, out, _mesh: out.to_local())


def apply_ep(model: nn.Module, emesh: DeviceMesh | None, tp_mesh: DeviceMesh | None,
             sequence_parallel: bool) -> list[nn.Parameter]:
    """Shard the MoE blocks of `model` (a GPT or a chunk) in place over the
    (pp, edp, ep, tp) mesh `emesh` (None: ep = 1) and the tp mesh (None:
    tp = 1). Returns the routed-expert parameters when ep > 1 (data
    parallelism must leave them to `reduce_expert_grads`), else []."""
    if emesh is None and tp_mesh is None:
        return []
    ep = emesh.size(emesh.mesh_dim_names.index("ep")) if emesh is not None else 1
    tp = tp_mesh.size() if tp_mesh is not None else 1
    ep_rank = emesh.get_local_rank("ep") if ep > 1 else 0
    tp_rank = tp_mesh.get_local_rank() if tp > 1 else 0
    place_mesh = emesh["ep", "tp"] if ep > 1 else tp_mesh
    groups = ExpertGroups(emesh.get_group("ep") if ep > 1 else None, ep,
                          tp_mesh.get_group() if tp > 1 else None, sequence_parallel and tp > 1)
    routed: list[nn.Parameter] = []
    for moe in [m for m in model.modules() if isinstance(m, MoE)]:
        moe.groups = groups
        experts = moe.experts
        for name, p in list(experts.named_parameters(recurse=False)):
            local, dim = p.detach().chunk(ep, dim=0)[ep_rank], _width_dim(name)
            if dim is not None:
                local = local.chunk(tp, dim=dim)[tp_rank]
            placements = ([Shard(0)] if ep > 1 else []) + [Shard(dim) if dim else Replicate()]
            param = nn.Parameter(DTensor.from_local(local.contiguous(), place_mesh, placements,
                                                    run_check=False))
            setattr(experts, name, param)
            if ep > 1:
                routed.append(param)
        if tp > 1:
            _replicate(moe.router, tp_mesh)
            for ffn in moe.shared:
                up = ("w1", "w3") if ffn.gated else ("fc1",)
                down = "w2" if ffn.gated else "fc2"
                parallelize_module(ffn, tp_mesh, {**{n: ColwiseParallel() for n in up},
                                                  down: RowwiseParallel()})
    return routed


@torch.no_grad()
def reduce_expert_grads(params: list[nn.Parameter], edp_group: dist.ProcessGroup | None,
                        dp: int) -> None:
    """Routed-expert gradients -> those of the global mean loss: summed over
    the expert-data-parallel group (None: size 1), divided by dp."""
    for p in params:
        if p.grad is None:
            continue
        g = p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
        if edp_group is not None:
            dist.all_reduce(g, group=edp_group)
        g.div_(dp)
