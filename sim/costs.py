"""Per-stage costs of one replica: op seconds, pipeline sends, optimizer seconds.

Per (stage, chunk) and op kind the compute seconds (`sim.compute`, on the
stage's device and slowdown) and the tensor-parallel communication seconds
(TP collectives block the compute stream in Megatron-LM, so they are
serialised with it, `sim.network.collectives`); the host's dispatch seconds
(`sim.host`); the pipeline send time between stages; the optimizer step.
Stage s holds `layers[s]` blocks (`sandbox.layout.stage_layers`), its chunks
the layout's `rank_chunk_sizes` (uneven when pp * vpp does not divide the
layers). With context parallelism every rank works on s / cp tokens (TP
collectives and pipeline sends too) and its ring attention's exposed KV
transfers (`sim.context_parallel`) block the compute stream. A MoE model's
chunk costs its dense and MoE blocks each at their own kernel times
(`sandbox.experts.layer_kinds` over the chunk's global blocks); a MoE block's
expert all-to-alls (`sim.expert_parallel`) block the compute stream too.
Units: seconds, bytes.
"""

from __future__ import annotations

from sandbox import counts, experts, memory, recompute
from sandbox.layout import local_seq_len, rank_chunk_sizes, rank_of
from sandbox.profile import Profile
from sandbox.specs import Plan
from sim import compute, memo
from sim.context_parallel import cp_times
from sim.expert_parallel import ep_times
from sim.host import host_ops
from sim.network.collectives import Coll, collective_time, concurrent_time
from sim.network.topology import Topology
from sim.work import OpCost, virtual_stages


def _mix(kinds: tuple[int, int], dense_s: float, moe_s: float) -> float:
    """Seconds of a chunk of (dense, MoE) blocks taking `dense_s` / `moe_s` each."""
    n_d, n_m = kinds
    return n_d * dense_s + (n_m * moe_s if n_m else 0.0)


def tp_times(plan: Plan, topo: Topology, prof: Profile, stage: int,
              lt: compute.LayerTimes, d: int = 0) -> tuple[float, float]:
    """(forward, backward) exposed TP communication seconds of one block.

    Two collectives each way (attention and MLP). With `tp_overlap` the two
    backward ones, at the column-parallel QKV and MLP-in layers, run while
    that layer's weight-gradient GEMM computes (not under zero-bubble, whose
    W is deferred): only the part longer than the GEMM is exposed. With
    `tp_comm_overlap` (sequence parallel) every all-gather and reduce-scatter
    is pipelined with its GEMM in tp chunks (`pipelined_exposed`): forward the
    all-gathers feed the column-parallel GEMMs (QKV, MLP-in) and the
    row-parallel ones (attention-out, MLP-out) feed the reduce-scatters;
    backward the all-gathers feed the row-parallel dgrads and the
    column-parallel dgrads feed the reduce-scatters.

    FP8 linears: with the tensorwise recipe the all-gathers carry fp8
    (`tp_gather_bytes`); with torchao's rowwise recipe async TP fuses only
    the matmul-reduce-scatters: its all-gather-matmuls stay unfused
    (pytorch/pytorch#149990, torchtitan#866), so those gathers are exposed
    whole.
    """
    m, p = plan.model, plan.parallel
    if p.tp == 1:
        return 0.0, 0.0
    w = 4 if plan.train.precision == "fp32" else 2
    nbytes = p.micro_batch * local_seq_len(plan) * m.hidden * w
    group = tuple(rank_of(plan, d, stage, t) for t in range(p.tp))
    if not p.sequence_parallel:
        one = collective_time(topo, Coll("all_reduce", group, nbytes), prof)
    else:
        ag = collective_time(topo, Coll("all_gather", group, tp_gather_bytes(plan, nbytes)),
                             prof)
        rs = collective_time(topo, Coll("reduce_scatter", group, nbytes), prof)
        one = ag + rs
    if p.tp_comm_overlap and p.sequence_parallel and lt.gemm_fwd:
        qkv, out, fc1, fc2 = lt.gemm_fwd
        d_qkv, d_out, d_fc1, d_fc2 = lt.gemm_dgrad
        rowwise = plan.train.precision == "fp8" and plan.train.fp8_recipe == "rowwise"

        def gathered(g: float) -> float:  # exposed seconds of the all-gather feeding g
            return ag if rowwise else pipelined_exposed(ag, g, p.tp)
        fwd = sum(gathered(g) for g in (qkv, fc1)) + sum(
            pipelined_exposed(rs, g, p.tp) for g in (out, fc2))
        bwd = sum(gathered(g) for g in (d_out, d_fc2)) + sum(
            pipelined_exposed(rs, g, p.tp) for g in (d_qkv, d_fc1))
        return fwd, bwd
    if p.tp_overlap and p.schedule != "zero-bubble":
        return 2 * one, sum(max(0.0, one - w) for w in lt.wgrad_column)
    return 2 * one, 2 * one  # attention and MLP, forward; the conjugates backward


def tp_gather_bytes(plan: Plan, nbytes: float) -> float:
    """Bytes of a sequence-parallel all-gather of an `nbytes` 16-bit activation.

    FP8 with the tensorwise recipe gathers the fp8 cast, 1 byte per element:
    torchao's Float8ColwiseParallel / PrepareFloat8ModuleInput cast the
    forward input before the gather and Float8RowwiseParallel casts the
    incoming gradient before the backward's gather (torchao
    float8/float8_tensor_parallel.py; torchtitan uses them for tensorwise
    only). Reduce-scatters stay 16-bit, and so does everything with the
    rowwise recipe (plain Colwise/RowwiseParallel)."""
    t = plan.train
    if t.precision == "fp8" and t.fp8_recipe == "tensorwise":
        return nbytes / 2
    return nbytes


def pipelined_exposed(comm_s: float, gemm_s: float, chunks: int) -> float:
    """Exposed seconds of a ring collective of `comm_s` (chunks - 1 equal steps)
    pipelined with a GEMM of `gemm_s` cut into `chunks` pieces (Megatron-Core /
    Transformer Engine userbuffers, PyTorch async TP): the pipeline takes
    gemm/c + (c - 1) max(gemm/c, step), so (c - 1) max(0, step - gemm/c) is
    exposed. `sim.compute.layer_times` prices the GEMM as its c pieces."""
    c = max(2, chunks)
    return (c - 1) * max(0.0, comm_s / (c - 1) - gemm_s / c)


def op_tp_recompute_s(plan: Plan, topo: Topology, prof: Profile, stage: int,
                      d: int = 0) -> float:
    """TP collectives of one block that "op" recompute runs again in backward:
    with SP the two all-gathers of the norms' outputs (the reduce-scatter
    outputs are kept), without SP the two all-reduces (not in the save list)."""
    m, p = plan.model, plan.parallel
    if p.tp == 1:
        return 0.0
    w = 4 if plan.train.precision == "fp32" else 2
    nbytes = p.micro_batch * local_seq_len(plan) * m.hidden * w
    group = tuple(rank_of(plan, d, stage, t) for t in range(p.tp))
    if p.sequence_parallel:
        return 2 * collective_time(topo, Coll("all_gather", group,
                                              tp_gather_bytes(plan, nbytes)), prof)
    return 2 * collective_time(topo, Coll("all_reduce", group, nbytes), prof)


def send_time(plan: Plan, topo: Topology, prof: Profile, d: int = 0, a: int = 0,
              b: int = 1) -> float:
    """Activation send of replica d from stage a to b by every TP rank (and
    every CP rank, its s / cp tokens) at once; with tp > 1 each rank sends
    1/tp (Megatron's scatter-gather) and the receiver all-gathers inside its
    node."""
    m, p = plan.model, plan.parallel
    if p.pp == 1:
        return 0.0
    w = 4 if plan.train.precision == "fp32" else 2
    nbytes = p.micro_batch * local_seq_len(plan) * m.hidden * w
    share = nbytes / p.tp
    colls = [Coll("send_recv", (rank_of(plan, d, a, t, c), rank_of(plan, d, b, t, c)), share)
             for c in range(p.cp) for t in range(p.tp)]
    t = concurrent_time(topo, colls, prof)
    if p.tp > 1 and not p.sequence_parallel:
        group = tuple(rank_of(plan, d, b, t) for t in range(p.tp))
        t += collective_time(topo, Coll("all_gather", group, nbytes), prof)
    return t


def stage_params(plan: Plan, layers: list[int], s: int) -> float:
    """Parameters held by one GPU of stage s when stages have `layers` blocks."""
    m, p = plan.model, plan.parallel
    if m.moe:
        return sum(stage_param_parts(plan, layers, s))
    return memory.stage_params_per_gpu(m, p.tp, p.pp, s, layers[s])


def chunk_blocks(plan: Plan, layers: list[int]) -> dict[tuple[int, int], range]:
    """Global block indices of each (stage, chunk) when stages hold `layers`
    blocks (virtual stage c * pp + s follows c * pp + s - 1)."""
    P, v = plan.parallel.pp, virtual_stages(plan)
    chunks = rank_chunk_sizes(plan, layers)
    out, start = {}, 0
    for vs in range(P * v):
        s, c = vs % P, vs // P
        n = chunks[s][c] if v > 1 else layers[s]
        out[(s, c)] = range(start, start + n)
        start += n
    return out


def stage_param_parts(plan: Plan, layers: list[int], s: int) -> tuple[float, float]:
    """(parameters other than the routed experts, routed-expert parameters)
    one GPU of stage s holds (`sandbox.counts`; the embedding / head parts
    from `sandbox.memory`). Dense models: (all, 0)."""
    m, p = plan.model, plan.parallel
    if not m.moe:
        return memory.stage_params_per_gpu(m, p.tp, p.pp, s, layers[s]), 0.0
    blocks = [r for (st, _c), r in chunk_blocks(plan, layers).items() if st == s]
    ends = memory.stage_params_per_gpu(m, p.tp, p.pp, s, 0)
    shared = ends + sum(counts.shared_block_params_per_gpu(m, p.tp, r) for r in blocks)
    routed = sum(counts.routed_params_per_gpu(m, p.tp, p.ep, r) for r in blocks)
    return shared, routed


def expert_shard(plan: Plan) -> int:
    """Ranks one routed expert's states are ZeRO-sharded over: its
    expert-data-parallel group (dp / ep replicas x cp)."""
    p = plan.parallel
    return p.dp // p.ep * p.cp


def stage_costs(plan: Plan, topo: Topology, prof: Profile, devs: list[compute.Device],
                slow: list[float], layers: list[int], d: int = 0, cache: dict | None = None
                ) -> tuple[dict[tuple[int, int, str], OpCost], list[float]]:
    """Op costs of replica d's stages and their optimizer seconds: stage s runs
    on `devs[s]` with its kernels `slow[s]` times slower, `layers[s]` blocks
    (`cache` keeps kernel times per device and sequence length between calls).

    Memoised per topology (`sim.memo`) by exactly these arguments: the plan
    (frozen), the profile, the devices, slowdowns, layers and replica; a
    search lowers a plan twice (its bound, then its simulation) and the
    simulator's replicas share stages. The OpCosts are shared, never changed;
    the dict and list are copies."""
    seen = memo.table(topo, "stage_costs")
    if seen is None:
        return _stage_costs(plan, topo, prof, devs, slow, layers, d, cache)
    key = (plan, prof, tuple(devs), tuple(slow), tuple(layers), d)
    got = seen.get(key)
    if got is None:
        got = seen[key] = _stage_costs(plan, topo, prof, devs, slow, layers, d, cache)
    return dict(got[0]), list(got[1])


def _stage_costs(plan: Plan, topo: Topology, prof: Profile, devs: list[compute.Device],
                 slow: list[float], layers: list[int], d: int = 0, cache: dict | None = None
                 ) -> tuple[dict[tuple[int, int, str], OpCost], list[float]]:
    p, tr = plan.parallel, plan.train
    P, v = p.pp, virtual_stages(plan)
    zb = p.schedule == "zero-bubble"
    ho, host = host_ops(plan), prof.host_op_overhead_s
    cost: dict[tuple[int, int, str], OpCost] = {}
    opt: list[float] = []
    per_dev: dict = {} if cache is None else cache
    chunks = rank_chunk_sizes(plan, layers)
    moe = plan.model.moe
    blocks = chunk_blocks(plan, layers) if moe else {}
    tpm_f = tpm_b = cpm_f = cpm_b = ep_f = ep_b = 0.0
    for s in range(P):
        dev, k = devs[s], slow[s]
        key = (dev, plan.model.seq_len)
        if key not in per_dev:
            per_dev[key] = (compute.layer_times(plan, dev), compute.embedding_times(plan, dev),
                            compute.head_times(plan, dev))
            if moe:
                per_dev[("moe", *key)] = compute.layer_times(plan, dev, moe=True)
        lt0, (emb_f, emb_b), (head_f, head_b) = per_dev[key]
        tp_f, tp_b = tp_times(plan, topo, prof, s, lt0, d)
        lt = compute.calibrated_layer(plan, dev, lt0, tp_f + tp_b)  # a measured layer, if any
        cp_f, cp_b = cp_times(plan, topo, prof, s, lt, d)  # exposed ring transfers per block
        lm = lt
        if moe:  # MoE blocks: own kernels, TP and CP exposure, all-to-alls
            lm = per_dev[("moe", *key)]
            tpm_f, tpm_b = tp_times(plan, topo, prof, s, lm, d)
            cpm_f, cpm_b = cp_times(plan, topo, prof, s, lm, d)
            ep_f, ep_b = ep_times(plan, topo, prof, s, lm, per_dev)
        rerun = recompute.forward_rerun_share(p.recompute, layers[s])
        attn_rerun = recompute.attention_rerun_share(p.recompute, layers[s])
        tp_re = op_tp_recompute_s(plan, topo, prof, s, d) if p.recompute == "op" else 0.0
        for c in range(v):
            vs, per_chunk = c * P + s, chunks[s][c]
            n_d, n_m = (experts.layer_kinds(plan.model, blocks[(s, c)]) if moe
                        else (per_chunk, 0))
            kinds = (n_d, n_m)

            f = (_mix(kinds, lt.fwd, lm.fwd) + (emb_f if vs == 0 else 0)
                 + (head_f if vs == P * v - 1 else 0))
            tf = _mix(kinds, tp_f, tpm_f)
            first, last = vs == 0, vs == P * v - 1
            re, tre, host_re, ep_re = 0.0, 0.0, 0.0, 0.0
            if p.recompute in ("full", "layer"):  # "layer": a share of the blocks
                re, tre = rerun * _mix(kinds, lt.fwd, lm.fwd), rerun * _mix(kinds, tp_f, tpm_f)
                if not moe:  # dense: as before (k_re = per_chunk * rerun)
                    k_re = per_chunk * rerun
                    re, tre = k_re * lt.fwd, k_re * tp_f
                host_re, ep_re = rerun * ho.block_fwd, rerun * n_m * ep_f
            elif p.recompute == "selective":
                re, host_re = per_chunk * lt.attn_core, ho.attn_core
            elif p.recompute == "op":
                re = _mix(kinds, lt.op_recompute, lm.op_recompute)
                tre, host_re = per_chunk * tp_re, ho.op_recompute
            extra_b = (emb_b if first else 0) + (head_b if last else 0)
            b_in = (_mix(kinds, lt.bwd_input, lm.bwd_input) if zb
                    else _mix(kinds, lt.bwd, lm.bwd)) + re + extra_b
            host_f = per_chunk * ho.block_fwd + ho.embedding_fwd * first + ho.head_fwd * last
            host_w = per_chunk * ho.block_bwd_weight
            host_b = (per_chunk * (ho.block_bwd_input + host_re) + ho.embedding_bwd * first
                      + ho.head_bwd * last + (0 if zb else host_w))
            cp_re = cp_f * attn_rerun  # the ring again
            cp_fwd = _mix(kinds, cp_f, cpm_f)
            cp_bwd = per_chunk * (cp_b + cp_re) if not moe else \
                _mix(kinds, cp_b, cpm_b) + attn_rerun * cp_fwd
            cost[(s, c, "F")] = OpCost(k * f, tf, host * host_f, cp_fwd, n_m * ep_f)
            cost[(s, c, "B")] = OpCost(k * b_in, _mix(kinds, tp_b, tpm_b) + tre, host * host_b,
                                       cp_bwd, n_m * ep_b + ep_re)
            w_s = (k * _mix(kinds, lt.bwd_weight, lm.bwd_weight) if moe
                   else k * per_chunk * lt.bwd_weight)
            cost[(s, c, "W")] = OpCost(w_s, 0.0, host * host_w) if zb \
                else OpCost(0.0, 0.0)
        dense_p, routed_p = stage_param_parts(plan, layers, s)
        shard = dense_p / (p.shard_size if p.zero >= 1 else 1)
        if routed_p:  # routed experts' states shard over their expert-data-parallel group
            shard += routed_p / (expert_shard(plan) if p.zero >= 1 else 1)
        server_side = p.dp_mode in ("parameter-server", "async") and p.dp > 1
        opt.append(0.0 if server_side else k * (
            compute.optimizer_time(dev, shard, tr.precision)
            + layers[s] * compute.block_optimizer_correction(plan, dev)))
    return cost, opt
