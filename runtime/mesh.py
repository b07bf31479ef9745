"""The one DeviceMesh a plan runs on: shape (pp, dp, tp), names ("pp", "dp", "tp").

tp is the innermost dimension, so tensor-parallel peers are neighbouring ranks
(the same node on a GPU cluster), pipeline stages the outermost, as in
Megatron-LM and torchtitan. The caller initialises the default process group
(torchrun / `dist.init_process_group`) before building the mesh.
"""

from __future__ import annotations

from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from sandbox.specs import Plan

MESH_DIMS = ("pp", "dp", "tp")


def build_mesh(plan: Plan, device_type: str) -> DeviceMesh:
    """The (pp, dp, tp) mesh over all ranks of the default process group."""
    p = plan.parallel
    return init_device_mesh(device_type, (p.pp, p.dp, p.tp), mesh_dim_names=MESH_DIMS)
