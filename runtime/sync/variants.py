"""How data-parallel replicas synchronise: `parallel.dp_mode` and
`parallel.grad_compression` for plain data parallelism (ZeRO 0, tp = pp = 1).

`apply_sync(model, plan, mesh)` returns the module to run and a sync object
that the step calls at two points, `after_backward()` (gradients are local
to the replica or already averaged) and `after_optimizer_step(step, sync)`:

- allreduce: DDP, its gradient all-reduce in buckets overlapped with
  backward, through the communication hook for `grad_compression`
  (`runtime.sync.grad_compression`: none, fp16, bf16, int8, topk:F, powersgd:R).
- local-sgd: no gradient synchronisation; each replica steps its own
  optimizer on its own gradients and the parameters are averaged over dp
  every `sync_every` steps with PyTorch's `PeriodicModelAverager` (local SGD,
  Stich 2019; Lin et al. 2020's post-local SGD without its warm-up). They are
  also averaged at a checkpoint and after the last step, so a checkpoint and
  the final model are one model. Optimizer states stay local (as in
  PyTorch's `PostLocalSGDOptimizer`). With sync_every = 1 and a linear
  optimizer (SGD with momentum, no clipping) this is DDP exactly; with AdamW
  or clipping it is not, because each replica normalises its own gradient.
- parameter-server, async: `runtime.sync.parameter_server`.

Every variant counts the bytes it sends in `traffic` (`runtime.sync.traffic`).
"""

from __future__ import annotations

import warnings
from typing import Protocol

import torch
from torch import nn
from torch.distributed.algorithms.model_averaging import averagers
from torch.distributed.algorithms.model_averaging.utils import average_parameters
from torch.distributed.device_mesh import DeviceMesh
from torch.nn.parallel import DistributedDataParallel as DDP

from runtime.parallel.mesh import side_group
from runtime.sync.grad_compression import register_compression
from runtime.sync.parameter_server import AsyncParameterServer, ParameterServer
from runtime.sync.traffic import Traffic
from sandbox.specs import Plan

BUCKET_CAP_MB: float | None = None  # DDP's gradient bucket size (None: DDP's default, 25)


class ReplicaSync(Protocol):
    """What the step asks of a synchronisation variant (DDPSync, LocalSGD,
    ParameterServer, AsyncParameterServer)."""

    norm_over_dp: bool  # the gradient norm sums over dp (each rank holds a shard's grads)
    traffic: Traffic  # bytes this rank sent for dp synchronisation

    def after_backward(self) -> None:
        """Gradients are local (or already averaged by DDP's hook)."""

    def after_optimizer_step(self, step: int, sync: bool = False) -> None:
        """After `optimizer.step()` of step `step` (1-based); `sync`: replicas must end equal."""


class DDPSync:
    """All-reduce DDP: everything happens inside backward (the comm hook)."""

    norm_over_dp = False

    def __init__(self, hook_state: object, traffic: Traffic):
        self.hook_state, self.traffic = hook_state, traffic

    def after_backward(self) -> None:
        pass

    def after_optimizer_step(self, step: int, sync: bool = False) -> None:
        pass


class LocalSGD:
    """Average parameters over dp every `period` optimizer steps (and when
    `sync` is set: at checkpoints and the end)."""

    norm_over_dp = False  # each replica clips its own gradient

    def __init__(self, model: nn.Module, period: int, group, traffic: Traffic):
        self.params = list(dict.fromkeys(model.parameters()))
        self.group, self.traffic = group, traffic
        with warnings.catch_warnings():  # period 1 warns "use DDP instead": that is the test
            warnings.simplefilter("ignore", UserWarning)
            self.averager = averagers.PeriodicModelAverager(period=period, warmup_steps=0,
                                                            process_group=group)
        self.bytes = sum(p.numel() * p.element_size() for p in self.params)

    def after_backward(self) -> None:
        pass

    @torch.no_grad()
    def after_optimizer_step(self, step: int, sync: bool = False) -> None:
        """`step`: optimizer steps done (1-based, so step k is the first average)."""
        if sync and step % self.averager.period:
            average_parameters(iter(self.params), self.group)
        else:
            self.averager.step = step  # the step count survives a restart this way
            self.averager.average_parameters(iter(self.params))
        if sync or step % self.averager.period == 0:
            self.traffic.record("all_reduce", self.bytes)


def uses_sync_variants(plan: Plan) -> bool:
    """Plain data parallelism with DDP: the layouts `apply_sync` handles."""
    p = plan.parallel
    return p.dp > 1 and p.tp == 1 and p.pp == 1 and p.zero == 0


def apply_sync(model: nn.Module, plan: Plan, mesh: DeviceMesh) -> tuple[nn.Module, ReplicaSync]:
    """(module to run, sync object) for `model` replicated over mesh["dp"].
    Collective: every rank calls it (it may create a process group). The plan
    is one `sandbox.validate.validate_runtime` accepts."""
    p = plan.parallel
    group = mesh["dp"].get_group()
    traffic = Traffic(n=p.dp)
    if p.dp_mode == "allreduce":
        ddp = DDP(model, process_group=group, bucket_cap_mb=BUCKET_CAP_MB)
        state = register_compression(ddp, p.compression, group, traffic,
                                     seed=plan.train.seed)
        return ddp, DDPSync(state, traffic)
    if p.dp_mode == "local-sgd":
        return model, LocalSGD(model, p.sync_every, group, traffic)
    if p.dp_mode in ("parameter-server", "async"):
        server = AsyncParameterServer if p.dp_mode == "async" else ParameterServer
        return model, server(model, group, side_group(mesh, "dp"), traffic)
    raise ValueError(f"parallel.dp_mode: unknown value {p.dp_mode!r}")
