"""Apply a plan's parallelism to the model: the contract the training loop uses.

`parallelize(plan, mesh, device)` builds the model from the plan's spec
(deterministic weights for the plan's seed, identical on every rank), then,
in torchtitan's order, for each model chunk this rank owns:

    pipeline split -> context parallel -> tensor parallel -> expert parallel (MoE) ->
    activation recompute
    -> (torch.compile, by the training loop) -> DDP / FSDP2 -> pipeline stages

Plain data parallelism with ZeRO 0 (tp = pp = 1) goes through
`runtime.sync.variants` instead of `apply_dp`: DDP with a communication hook
for `grad_compression`, local SGD, or a parameter server (`dp_mode`). The
training loop calls `after_optimizer_step` after `optimizer.step()` and
before `zero_grad()`. With context parallelism (`runtime.parallel.context`)
`step` / `evaluate` cut each sequence to this cp rank's two chunks, and
gradients are averaged (ZeRO-sharded) over dp x cp.

and returns a `Parallelized` that runs one optimizer step's forward and
backward, evaluates, clips gradients and builds the optimizer. `mesh` is the
(pp, dp, cp, tp) DeviceMesh from `runtime.parallel.mesh.build_mesh` (None for one process).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP

from runtime.layers.moe import MoE, moe_modules
from runtime.model import build_model
from runtime.parallel.context import ContextParallel, apply_cp
from runtime.parallel.data import apply_dp, grad_sync
from runtime.parallel.expert import apply_ep, expert_mesh, reduce_expert_grads
from runtime.parallel.mesh import grad_mesh, hsdp_mesh, side_group
from runtime.parallel.pipeline import (
    build_schedule,
    split_model,
    sync_tied_grads,
    tied_copies,
    tied_group,
)
from runtime.parallel.recompute import apply_recompute
from runtime.parallel.tensor import apply_tp
from runtime.sync.variants import ReplicaSync, apply_sync, uses_sync_variants
from sandbox.runtime_rules import validate_runtime
from sandbox.specs import Plan


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of (b, s, V) logits against (b, s) ids."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


@dataclass
class PipelineState:
    """This rank's part of a pipeline (pp > 1).

    schedule: the `torch.distributed.pipelining` schedule over its chunks.
    first / last: it holds the first / last chunk (embeddings / head).
    tied: its copies of a tied embedding matrix (first chunk's embedding,
        last chunk's head); tied_group: the first and last rank's group
        that sums their gradients (None on middle ranks).
    norm_skip: ids of copies left out of the gradient norm (the head's copy,
        counted once as the embedding).
    """

    schedule: Any
    first: bool
    last: bool
    tied: list[nn.Parameter] = field(default_factory=list)
    tied_group: dist.ProcessGroup | None = None
    norm_skip: set[int] = field(default_factory=set)


@dataclass
class Parallelized:
    """The model parts this rank owns and how to run a step over them.

    parts: model chunks on this rank (one, or vpp chunks with interleaving).
    mesh: the (pp, dp, cp, tp) DeviceMesh, or None in a single process.
    pipeline: this rank's pipeline state (pp > 1), or None.
    context: this rank's context-parallel attention (cp > 1), or None.
    side_groups: per mesh dimension ("pp", "dp", "cp"), the process group for the
        loss / norm reductions (None: the dimension has size 1).
    sync: how plain dp replicas synchronise (`runtime.sync.variants`), or None.
    """

    plan: Plan
    parts: list[nn.Module]
    device: torch.device
    mesh: object | None = None
    autocast_dtype: torch.dtype | None = None
    pipeline: PipelineState | None = None
    context: ContextParallel | None = None
    side_groups: dict[str, dist.ProcessGroup | None] = field(default_factory=dict)
    sync: ReplicaSync | None = None
    loss_scale: float = 1.0  # fp16: the loss is multiplied by this before backward
    moe: list[MoE] = field(default_factory=list)  # this rank's MoE feed-forwards
    experts: list[nn.Parameter] = field(default_factory=list)  # ep > 1: reduced over edp
    edp_group: dist.ProcessGroup | None = None  # expert-data-parallel group (None: size 1)
    aux_loss: float | None = None  # the last step's load-balancing loss (MoE), global mean

    def scaled_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The pipeline schedule's loss: cross-entropy times the loss scale."""
        return cross_entropy(logits, targets) * self.loss_scale

    @torch.no_grad()
    def unscale_grads(self) -> None:
        """Divide every gradient by the loss scale (before clipping)."""
        if self.loss_scale != 1.0:
            for p in self.parameters():
                if p.grad is not None:
                    p.grad.div_(self.loss_scale)

    def parameters(self) -> list[nn.Parameter]:
        seen, out = set(), []
        for part in self.parts:
            for p in part.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out

    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _group(self, dim: str) -> dist.ProcessGroup | None:
        """Group for this rank's loss / norm reductions along `dim` (or None)."""
        return self.side_groups.get(dim)

    def _global_mean(self, local: torch.Tensor) -> float:
        """This replica's mean loss (held by the last stage) -> the global mean."""
        if (pp := self._group("pp")) is not None:
            dist.all_reduce(local, group=pp)  # only the last stage holds a non-zero loss
        if (dp := self._group("dp")) is not None:
            dist.all_reduce(local, group=dp)
            local = local / self.plan.parallel.dp
        if (cp := self._group("cp")) is not None:  # equal token counts on every cp rank
            dist.all_reduce(local, group=cp)
            local = local / self.plan.parallel.cp
        return local.item()

    def _pipeline(self, tokens: torch.Tensor, targets: torch.Tensor, train: bool) -> torch.Tensor:
        """Run the schedule over this replica's batch; the mean microbatch loss
        on the rank holding the last stage, zero elsewhere."""
        pipe, losses = self.pipeline, []
        args = (tokens,) if pipe.first else ()
        kwargs = {"target": targets, "losses": losses} if pipe.last else {}
        with self._autocast():
            pipe.schedule.step(*args, **kwargs) if train else pipe.schedule.eval(*args, **kwargs)
        if not pipe.last:
            return torch.zeros((), device=self.device)
        return torch.stack([loss.detach().float() for loss in losses]).mean() / self.loss_scale

    def _local(self, tokens: torch.Tensor, targets: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """On this device; with cp, this rank's two chunks of every sequence."""
        tokens, targets = tokens.to(self.device), targets.to(self.device)
        if self.context is not None:
            tokens, targets = self.context.shard(tokens), self.context.shard(targets)
        return tokens, targets

    def step(self, tokens: torch.Tensor, targets: torch.Tensor) -> float:
        """Forward + backward over this replica's share of the global batch.

        tokens, targets: (sequences for this dp rank, seq_len) int64. Splits
        them into plan.parallel.micro_batch-sized microbatches, accumulates
        gradients scaled so they equal the gradient of the mean loss over the
        whole global batch, and returns that mean loss (same on every rank).
        MoE: the load-balancing loss's gradient enters with the LM loss's scale
        and its value (summed over blocks, mean over micro-batches and
        replicas) goes to `aux_loss`; routed experts are reduced over edp.
        """
        n = self.plan.parallel.microbatches
        for m in self.moe:  # pipeline schedules divide every gradient by n themselves
            m.aux_values.clear()
            m.aux_grad_scale = self.loss_scale / (1 if self.pipeline is not None else n)
        loss = self._step(tokens, targets)
        if self.experts:
            reduce_expert_grads(self.experts, self.edp_group, self.plan.parallel.dp)
        if self.moe:
            local = sum((torch.stack(m.aux_values[-n:]).mean() for m in self.moe if m.aux_values),
                        torch.zeros((), device=self.device))
            self.aux_loss = self._global_mean(local)
        return loss

    def _step(self, tokens: torch.Tensor, targets: torch.Tensor) -> float:
        tokens, targets = self._local(tokens, targets)
        if self.pipeline is not None:
            local = self._pipeline(tokens, targets, train=True)
            sync_tied_grads(self.pipeline.tied, self.pipeline.tied_group)
            return self._global_mean(local)
        model, zero = self.parts[0], self.plan.parallel.zero
        chunks = tokens.split(self.plan.parallel.micro_batch)
        tchunks = targets.split(self.plan.parallel.micro_batch)
        total = torch.zeros((), device=self.device)
        for i, (x, y) in enumerate(zip(chunks, tchunks, strict=True)):
            with grad_sync(model, zero, last_microbatch=i == len(chunks) - 1):
                with self._autocast():
                    logits = model(x)
                loss = cross_entropy(logits, y)
                (loss * self.loss_scale / len(chunks)).backward()
            total += loss.detach()
        if self.sync is not None:
            self.sync.after_backward()
        return self._global_mean(total / len(chunks))

    @torch.no_grad()
    def evaluate(self, tokens: torch.Tensor, targets: torch.Tensor) -> float:
        """Mean loss without gradients, averaged over the dp ranks (same on
        every rank). Each dp rank passes its share (or all ranks the same
        batch). With pp the batch is a multiple of the training share."""
        tokens, targets = self._local(tokens, targets)
        if self.pipeline is not None:
            n = self.plan.parallel.microbatches * self.plan.parallel.micro_batch
            if len(tokens) % n:
                raise ValueError(f"evaluate: with pp > 1 the batch ({len(tokens)} sequences) "
                                 f"must be a multiple of {n} (microbatches x micro_batch)")
            local = torch.stack([self._pipeline(x, y, train=False) for x, y in
                                 zip(tokens.split(n), targets.split(n), strict=True)]).mean()
            return self._global_mean(local)
        losses = []
        for x, y in zip(tokens.split(self.plan.parallel.micro_batch),
                        targets.split(self.plan.parallel.micro_batch), strict=True):
            with self._autocast():
                losses.append(cross_entropy(self.parts[0](x), y))
        return self._global_mean(torch.stack(losses).mean())

    def clip_grad_norm_(self, max_norm: float) -> float:
        """Clip the global gradient norm over all ranks' shards and stages
        (a tied embedding counted once); returns the norm before clipping."""
        skip = self.pipeline.norm_skip if self.pipeline is not None else set()
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        by_mesh: dict[object, list[torch.Tensor]] = {}
        for p in self.parameters():
            if p.grad is not None and id(p) not in skip:
                key = p.grad.device_mesh if isinstance(p.grad, DTensor) else None
                by_mesh.setdefault(key, []).append(p.grad)
        total_sq = torch.zeros((), device=self.device)
        for group in by_mesh.values():
            norm = torch.nn.utils.get_total_norm(group, 2.0)
            total_sq += (norm.full_tensor() if isinstance(norm, DTensor) else norm) ** 2
        if (pp := self._group("pp")) is not None:
            dist.all_reduce(total_sq, group=pp)
        if self.sync is not None and self.sync.norm_over_dp:  # parameter server: shards
            dist.all_reduce(total_sq, group=self._group("dp"))
        total = total_sq.sqrt()
        coef = max_norm / (total + 1e-6)
        if max_norm > 0 and coef < 1:
            for g in grads:
                g.mul_(coef.item())
        return total.item()

    def after_optimizer_step(self, step: int, sync: bool = False) -> None:
        """Synchronise replicas after `optimizer.step()` of step `step`
        (1-based), before `zero_grad()`: local SGD's averaging, the parameter
        server's pull. `sync`: a checkpoint or the last step follows, so the
        replicas must end up equal."""
        if self.sync is not None:
            self.sync.after_optimizer_step(step, sync)

    def comm_bytes(self) -> float | None:
        """Bytes this rank sent for dp synchronisation since the last call
        (None when not counted: layouts other than plain DDP)."""
        return self.sync.traffic.take() if self.sync is not None else None

    def build_optimizer(self) -> torch.optim.Optimizer:
        """AdamW (or SGD) over this rank's parameters. With ZeRO >= 1 they are
        FSDP2 shards, so the optimizer states are sharded over dp too."""
        t, params = self.plan.train, self.parameters()
        is_dt = {isinstance(p, DTensor) for p in params}
        foreach = len(is_dt) == 1  # foreach kernels cannot mix DTensor and Tensor
        if t.optimizer == "sgd":
            return torch.optim.SGD(params, lr=t.lr, momentum=0.9,
                                   weight_decay=t.weight_decay, foreach=foreach)
        return torch.optim.AdamW(params, lr=t.lr, betas=(0.9, 0.95),
                                 weight_decay=t.weight_decay, foreach=foreach)


def parallelize(plan: Plan, mesh: object | None, device: torch.device) -> Parallelized:
    """Build the model for this rank and apply the plan's parallelism."""
    p = plan.parallel
    if mesh is None and plan.world_size != 1:
        raise ValueError(f"parallelize: a world of {plan.world_size} ranks needs a DeviceMesh")
    validate_runtime(plan)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(plan.train.precision)
    if device.type == "cpu":
        autocast = None  # CPU runs train in fp32
    model = build_model(plan.model, seed=plan.train.seed,
                        attention=plan.train.attention).to(device)
    if p.pp > 1:
        chunks = split_model(model, plan, mesh["pp"].get_local_rank())
    else:
        chunks = [(0, model)]
    parts, sync, wrapped, routed, context = [], None, 0, [], None
    emesh = expert_mesh(plan, device.type) if p.ep > 1 else None
    if p.cp > 1:
        context = ContextParallel(mesh["cp"].get_group(), plan.model.seq_len,
                                  getattr(p, "cp_method", "ring"))
    shard_mesh = grad_mesh(mesh) if p.dp * p.cp > 1 else None  # dp, or dp x cp
    for _, chunk in chunks:
        if context is not None:
            apply_cp(chunk, context)
        if p.tp > 1:
            apply_tp(chunk, mesh["tp"], p.sequence_parallel)
        if plan.model.moe:
            experts = apply_ep(chunk, emesh, mesh["tp"] if p.tp > 1 else None,
                               p.sequence_parallel)
            routed += experts
        wrapped = apply_recompute(chunk, p.recompute, wrapped)
        if uses_sync_variants(plan) and p.cp == 1:
            if plan.model.moe and p.ep > 1:  # left to reduce_expert_grads
                ids = {id(e) for e in experts}
                DDP._set_params_and_buffers_to_ignore_for_model(
                    chunk, [n for n, q in chunk.named_parameters() if id(q) in ids])
            chunk, sync = apply_sync(chunk, plan, mesh)
        elif shard_mesh is not None:
            hsdp = 0 < p.dp_shard < p.dp
            dp_mesh = hsdp_mesh(plan, device.type) if hsdp else shard_mesh
            # under pipelining FSDP2 units stay unsharded through the step (as
            # torchtitan sets it, and as the simulator prices it)
            chunk = apply_dp(chunk, dp_mesh, p.zero, pipelined=p.pp > 1,
                             reshard_after_forward=p.reshard_after_forward and p.pp == 1,
                             ignored=set(experts) if plan.model.moe else None)
        parts.append(chunk)
    par = Parallelized(plan=plan, parts=parts, device=device, mesh=mesh, autocast_dtype=autocast,
                       sync=sync, moe=moe_modules(parts), experts=routed,
                       edp_group=emesh.get_group("edp") if emesh is not None
                       and p.dp > p.ep else None, context=context)
    if mesh is not None:
        par.side_groups = {dim: side_group(mesh, dim) for dim in ("pp", "dp", "cp")}
    if p.pp > 1:
        n_stages = p.pp * p.vpp
        stages = [s for s, _ in chunks]
        last = n_stages - 1 in stages
        tied, tied_pg, skip = [], None, set()
        if plan.model.tied_embeddings:
            tied = tied_copies(chunks, n_stages)
            if last:  # the head's copy is counted once, as the embedding
                skip = {id(tied[-1])}
            tied_pg = tied_group(mesh)
        schedule = build_schedule(plan, list(zip(stages, parts, strict=True)), mesh["pp"],
                                  device, par.scaled_loss)
        par.pipeline = PipelineState(schedule, first=0 in stages, last=last, tied=tied,
                                     tied_group=tied_pg, norm_skip=skip)
    return par
