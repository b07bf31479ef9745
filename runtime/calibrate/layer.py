"""One whole transformer layer as the runtime runs it: forward + backward, and
one AdamW step over its parameters.

The per-kernel benchmarks (`runtime.calibrate.kernels`) time each GEMM, the
attention core and the memory-bound ops alone. A training step also pays for
what lies between them: autograd bookkeeping, views and bias reductions and,
under tensor parallelism, DTensor's dispatch, its redistributions (the
all-gathers and reduce-scatters of sequence parallelism with their
functional-collective waits and layout copies) and an optimizer over
DTensor parameters of mixed placements. `bench_layer` measures one block of
the runtime's `GPT` exactly as a rank runs it: plain for tp = 1, and for
tp > 1 a one-layer stage sharded with `runtime.parallel.tensor.apply_tp` over
all processes of the default process group (run it from every rank at once,
`runtime.calibrate.concurrent`). The simulator uses the two times to calibrate a
whole layer (`sim.compute.calibrated_layer`, `block_optimizer_correction`).

Units: seconds (per call), FLOPs, bytes.
"""

from __future__ import annotations

import dataclasses

import torch

from runtime.calibrate.kernels import DTYPES, KernelResult, time_fn
from sandbox import counts, memory
from sandbox.specs import Model


def _one_layer_stage(spec: Model, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A pipeline-stage-like GPT holding one block and nothing else."""
    from runtime.model import GPT

    with torch.device(device):
        stage = GPT(dataclasses.replace(spec, layers=1))
    stage.tok_embeddings = stage.pos_embeddings = stage.norm = stage.output = None
    return stage.to(dtype=dtype)


def bench_layer(spec: Model, micro_batch: int, device: torch.device, dtype: str = "fp32",
                tp: int = 1, sequence_parallel: bool = False, repeats: int = 7,
                min_time_s: float = 0.01) -> list[KernelResult]:
    """[forward + backward of one block, AdamW step over its parameters] on this
    rank; tp > 1 needs an initialised default process group of tp processes.

    The input is what the block receives in a model: (b, s, h), or with
    sequence parallelism this rank's (b, s / tp, h) shard. The optimizer is
    `torch.optim.AdamW` with foreach kernels only when the parameters are all
    DTensors or all plain tensors, as `runtime.parallel.parallelize` builds it.
    Shape recorded: (micro_batch, seq_len, hidden, heads, ffn_hidden, tp,
    sequence_parallel).
    """
    from torch.distributed.tensor import DTensor

    dt = DTYPES[dtype]
    stage = _one_layer_stage(spec, device, dt)
    sp = sequence_parallel and tp > 1
    if tp > 1:
        from torch.distributed.device_mesh import init_device_mesh

        from runtime.parallel.tensor import apply_tp

        apply_tp(stage, init_device_mesh(device.type, (tp,)), sp)
    x = torch.randn(micro_batch, spec.seq_len // tp if sp else spec.seq_len, spec.hidden,
                    device=device, dtype=dt, requires_grad=True)
    g = torch.randn_like(x)

    def fwd_bwd():
        stage(x).backward(g)

    shape = (micro_batch, spec.seq_len, spec.hidden, spec.heads, spec.ffn_hidden, tp, int(sp))
    tokens = micro_batch * spec.seq_len
    flops = 3.0 * tokens * (counts.layer_matmul_flops_per_token(spec)
                            + counts.layer_attention_flops_per_token(spec)) / tp
    threads = torch.get_num_threads()
    st = time_fn(fwd_bwd, device, repeats, min_time_s)
    params = list(stage.parameters())
    foreach = len({isinstance(p, DTensor) for p in params}) == 1
    opt = torch.optim.AdamW(params, lr=1e-6, foreach=foreach)
    so = time_fn(opt.step, device, repeats, min_time_s)
    moved = 28.0 * memory.layer_params_per_gpu(spec, tp)  # as bench_adamw: 7 fp32 arrays
    return [KernelResult("block", "block", shape, dtype, "fwd+bwd", threads, flops, 0.0, st),
            KernelResult("block", "block_adamw", shape, dtype, "optimizer", threads, 0.0,
                         moved, so)]
