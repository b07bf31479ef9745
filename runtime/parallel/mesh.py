"""The one DeviceMesh a plan runs on: shape (pp, dp, cp, tp), names ("pp", "dp", "cp", "tp").

tp is the innermost dimension, so tensor-parallel peers are neighbouring ranks
(the same node on a GPU cluster), context-parallel peers next, pipeline stages
the outermost, as in Megatron-LM and torchtitan: rank (stage, replica,
cp_rank, tp_rank) is `sandbox.layout.rank_of`, the rank the simulator places
there too. cp is 1 unless `parallel.cp` says otherwise. The caller
initialises the default process group (torchrun / `dist.init_process_group`)
before building the mesh.
"""

from __future__ import annotations

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from sandbox.layout import rank_of
from sandbox.specs import Plan

MESH_DIMS = ("pp", "dp", "cp", "tp")


def build_mesh(plan: Plan, device_type: str) -> DeviceMesh:
    """The (pp, dp, cp, tp) mesh over all ranks of the default process group."""
    p = plan.parallel
    mesh = init_device_mesh(device_type, (p.pp, p.dp, p.cp, p.tp), mesh_dim_names=MESH_DIMS)
    grid = [[[[rank_of(plan, d, s, t, c) for t in range(p.tp)] for c in range(p.cp)]
             for d in range(p.dp)] for s in range(p.pp)]
    if mesh.mesh.tolist() != grid:
        raise RuntimeError(f"build_mesh: ranks {mesh.mesh.tolist()} differ from "
                           f"sandbox.layout.rank_of {grid}")
    return mesh


def grad_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The ranks that hold the same weights: "dp", or with context parallelism
    the flattened ("dp", "cp") dimension (`sandbox.layout.grad_ranks`), over
    which gradients are averaged and ZeRO shards. Collective the first time."""
    if mesh["cp"].size() == 1:
        return mesh["dp"]
    return mesh["dp", "cp"]._flatten("dp_cp")


def hsdp_mesh(plan: Plan, device_type: str) -> DeviceMesh:
    """HSDP's 2-D (replicate, shard) mesh over the data-parallel ranks:
    `parallel.dp_shard` consecutive replicas share one shard group
    (`sandbox.layout.shard_groups`), FSDP2 reduce-scatters over it and
    all-reduces the shards across the replicate groups. Only with tp = pp = 1
    (then the world is dp; `sandbox.validate.runtime_problems`). Collective."""
    p = plan.parallel
    return init_device_mesh(device_type, (p.dp // p.shard_size, p.shard_size),
                            mesh_dim_names=("replicate", "shard"))


def side_group(mesh: DeviceMesh, dim: str) -> dist.ProcessGroup | None:
    """A second process group along mesh dimension `dim` for this rank (None
    if the dimension has size 1): small reductions (loss, gradient norm) run
    on it so that they never share a gloo communicator, and its tags, with
    the pipeline's in-flight send/recv or FSDP's asynchronous collectives on
    the mesh's own group. Collective: every rank must call it, in order."""
    k = MESH_DIMS.index(dim)
    if mesh.mesh.shape[k] == 1:
        return None
    rows = mesh.mesh.movedim(k, -1).reshape(-1, mesh.mesh.shape[k]).tolist()
    group, _ = dist.new_subgroups_by_enumeration(rows)
    return group
