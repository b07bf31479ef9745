"""The sections of a plan, as plain data: what to train, where, and how.

`Model`, `GPU`, `Cluster`, `Parallel` and `Train` are frozen dataclasses
with no behaviour beyond derived sizes; the engines (`sim/`, `runtime/`)
interpret them, and `sandbox.specs.Plan` holds one of each. Units are in the
field names or docstrings: GB = 1e9 bytes, GB/s = 1e9 bytes per second,
Gbit/s = 1e9 bits per second. Build them with `sandbox.load(...)`, which
applies presets and validates. This module imports nothing from sandbox: every
other module may depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass

ACTIVATIONS = ("gelu", "swiglu")
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope")
TOPOLOGIES = ("fat-tree", "rail", "torus", "ring")
SCHEDULES = ("gpipe", "1f1b", "interleaved-1f1b", "zero-bubble")
RECOMPUTE = ("none", "selective", "full", "op", "layer")
DP_MODES = ("allreduce", "parameter-server", "async", "local-sgd")
PRECISIONS = ("fp32", "fp16", "bf16", "fp8")
OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULES = ("cosine", "constant")
FAILURE_DISTRIBUTIONS = ("exponential", "weibull")
ATTENTION = ("flash", "eager")
ATTENTION_KERNELS = ("fa2", "fa3", "cudnn")  # sandbox.attention_kernels
ATTENTION_KINDS = ("", "mha", "gqa", "mla")
CP_METHODS = ("ring", "allgather")
FP8_RECIPES = ("tensorwise", "rowwise")


@dataclass(frozen=True)
class Model:
    """A decoder-only transformer (GPT-2/3 style or Llama style)."""

    layers: int
    hidden: int
    heads: int
    vocab: int
    seq_len: int
    kv_heads: int = 0  # 0: same as heads (multi-head attention); fewer: GQA
    ffn_hidden: int = 0  # 0: 4*hidden for gelu, Llama's 8/3 rule for swiglu
    activation: str = "gelu"  # gelu (2-matrix MLP) | swiglu (3-matrix gated MLP)
    norm: str = "layernorm"  # layernorm | rmsnorm
    position: str = "learned"  # learned absolute embeddings | rope
    bias: bool = True  # biases in linear layers and LayerNorm
    tied_embeddings: bool = True  # output head shares the token embedding
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    # per-head width of queries and keys (0: hidden / heads; Qwen3 uses 128 with
    # hidden 4096 and 64 heads). With MLA: the non-RoPE part (qk_nope_head_dim).
    head_dim: int = 0
    # "" (multi-head or grouped-query attention, from heads and kv_heads), "mha",
    # "gqa", or "mla": DeepSeek-V2/V3's multi-head latent attention (queries
    # through a q_lora_rank bottleneck, keys and values from one kv_lora_rank
    # latent, plus a qk_rope_head_dim RoPE key shared by all heads)
    attention_kind: str = ""
    q_lora_rank: int = 0  # MLA: query down-projection rank (0: full-rank queries)
    kv_lora_rank: int = 0  # MLA: width of the compressed key-value latent
    qk_rope_head_dim: int = 0  # MLA: RoPE part of each query / key head
    v_head_dim: int = 0  # MLA: per-head value width (0: head_dim)
    # Mixture of experts (`sandbox.experts`; 0 experts: every block is dense).
    # A MoE block replaces the FFN by `experts` routed FFNs of width
    # `expert_ffn_hidden` (0: ffn_hidden), of which each token visits the top
    # `experts_per_token`, plus `shared_experts` FFNs of that width every token
    # visits; the first `dense_layers` blocks keep the dense FFN (ffn_hidden).
    experts: int = 0
    experts_per_token: int = 0
    expert_ffn_hidden: int = 0
    shared_experts: int = 0
    dense_layers: int = 0
    # tokens an expert accepts per micro-batch, as a multiple of its balanced
    # share (tokens * top-k / experts); the rest are dropped. 0: dropless
    capacity_factor: float = 0.0
    router_aux_loss: float = 0.01  # load-balancing loss coefficient (Switch Transformer)
    # (simulator) router load imbalance: expert i's share of the tokens is
    # proportional to 1 / (i + 1)^router_skew (Zipf-like; 0 = balanced), experts
    # placed on the ep ranks after a permutation seeded by cluster.variation_seed
    # (`sandbox.experts.expert_shares`)
    router_skew: float = 0.0
    # (simulator) which experts a token's top-k are, for the dispatch bytes
    # (`sandbox.experts.distinct_units`): "uniform" (a uniformly random k-subset
    # of the experts: a balanced learned router) or "round-robin" (token t of a
    # micro-batch to experts t*k .. t*k+k-1 mod experts: NeMo AutoModel's
    # FakeBalancedGate, consecutive experts on few ranks)
    routing: str = "uniform"
    # (simulator) node-limited routing: a token's experts lie on at most this
    # many nodes of its expert-parallel group (DeepSeek-V3's M = 4); 0: unlimited
    max_route_nodes: int = 0
    name: str = "custom"

    def __post_init__(self) -> None:
        if not self.head_dim and self.heads > 0:
            object.__setattr__(self, "head_dim", self.hidden // self.heads)
        if self.attention_kind == "mla" and not self.v_head_dim:
            object.__setattr__(self, "v_head_dim", self.head_dim)
        if self.experts and not self.expert_ffn_hidden:
            object.__setattr__(self, "expert_ffn_hidden", self.ffn_hidden)

    @property
    def kind(self) -> str:
        """The attention kind: "mha", "gqa" (fewer kv heads) or "mla"."""
        if self.attention_kind == "mla":
            return "mla"
        return "gqa" if self.kv_heads and self.kv_heads < self.heads else "mha"

    @property
    def q_dim(self) -> int:
        """Width of the query projection (= hidden when heads divide it; MLA:
        heads x (head_dim + qk_rope_head_dim))."""
        return self.heads * (self.head_dim + self.qk_rope_head_dim)

    @property
    def kv_dim(self) -> int:
        """Width of each of the key and value projections (MLA: of the
        up-projected keys; values are heads x v_head_dim, `v_dim`)."""
        if self.kind == "mla":
            return self.q_dim
        return self.kv_heads * self.head_dim

    @property
    def v_dim(self) -> int:
        """Width of the values, the attention core's output (= kv_dim without MLA)."""
        return self.heads * self.v_head_dim if self.kind == "mla" else self.kv_dim

    @property
    def moe(self) -> bool:
        """Whether some blocks are mixtures of experts."""
        return self.experts > 0


@dataclass(frozen=True)
class GPU:
    """One accelerator (or one CPU process): dense peak rates and memory."""

    name: str
    tflops_fp32: float  # dense FP32 (non-tensor-core) TFLOP/s
    tflops_tf32: float  # dense TF32 tensor-core TFLOP/s (0: none)
    tflops_fp16: float  # dense FP16 tensor-core TFLOP/s
    tflops_bf16: float  # dense BF16 tensor-core TFLOP/s
    tflops_fp8: float  # dense FP8 tensor-core TFLOP/s (0: not supported)
    hbm_gb: float  # device memory, GB (1e9 bytes)
    hbm_gb_per_s: float  # device memory bandwidth, GB/s
    tdp_w: float = 0.0  # board power the datasheet peaks assume, W (0: unknown)
    power_limit_w: float = 0.0  # board power cap the GPU runs under, W (0: the TDP)

    def sustained_fraction(self) -> float:
        """Fraction of the datasheet tensor-core clock a power-capped GPU sustains.

        Dynamic power is P ~ C V^2 f, and in the DVFS range the voltage scales
        roughly with the frequency (V ~ f), so P ~ f^3 and a cap P' < TDP holds
        the clock at f' / f = (P' / TDP)^(1/3) (the cube law of CMOS dynamic
        power; e.g. Rabaey, Digital Integrated Circuits, 2nd ed., 5.5, and the
        DVFS literature). Assumes the compute-bound kernels draw the full TDP
        at the datasheet clock; static power and memory clocks are ignored.
        1.0 without a cap or below-TDP limit."""
        if self.tdp_w <= 0 or self.power_limit_w <= 0:
            return 1.0
        return min(1.0, (self.power_limit_w / self.tdp_w) ** (1.0 / 3.0))

    def peak_flops(self, precision: str) -> float:
        """Dense peak of the matmul dtype used by `precision`, in FLOP/s."""
        tflops = {
            "fp32": self.tflops_fp32,
            "fp16": self.tflops_fp16,
            "bf16": self.tflops_bf16,
            "fp8": self.tflops_fp8,
        }[precision]
        return tflops * 1e12


@dataclass(frozen=True)
class Cluster:
    """Nodes of GPUs, the links inside a node and the network between nodes."""

    gpu: GPU
    nodes: int = 1
    gpus_per_node: int = 8
    intra_node_link: str = "nvlink3"  # label of the in-node fabric (all-to-all switch)
    intra_node_gb_per_s: float = 300.0  # per GPU, per direction, GB/s
    intra_node_latency_us: float = 1.0  # one hop GPU -> switch -> GPU, microseconds
    topology: str = "fat-tree"  # fat-tree | rail | torus | ring
    nics_per_node: int = 8
    nic_gbit_per_s: float = 200.0  # per NIC, per direction, Gbit/s
    inter_node_latency_us: float = 5.0  # NIC -> switch(es) -> NIC, microseconds
    oversubscription: float = 1.0  # fat-tree leaf uplink oversubscription ratio
    gpu_mtbf_h: float = 0.0  # mean time between failures of one GPU, hours (0: never)
    node_mtbf_h: float = 0.0  # host failures per node (CPU, memory, PSU, software), hours
    link_mtbf_h: float = 0.0  # one NIC/cable link, hours
    switch_mtbf_h: float = 0.0  # one network switch, hours
    failure_distribution: str = "exponential"  # exponential | weibull
    weibull_shape: float = 1.0
    restart_s: float = 600.0  # detect + re-queue + restart a job, seconds
    storage_gb_per_s: float = 10.0  # checkpoint write/read bandwidth per node, GB/s
    storage_total_gb_per_s: float = 0.0  # the shared filesystem's cap, GB/s (0: none)
    usd_per_gpu_hour: float = 0.0
    # fraction of each GPU's memory a plan must leave free to "fit": the CUDA
    # context, NCCL buffers and the caching allocator's fragmentation, which the
    # memory model (allocated tensors only) does not count; in [0, 0.5)
    memory_reserve: float = 0.05
    profile: str = ""  # calibration profile TOML (see `sandbox calibrate`)
    # Stragglers and heterogeneity (simulator): GPUs given by global rank, and a
    # random fraction of all GPUs drawn with `variation_seed`, run their kernels
    # `slow_gpu_slowdown` times slower; links named "nvlink:R" (GPU R's in-node
    # port), "nic:N.K" (NIC K of node N to its switch) or "node:N" (every NIC of
    # node N), and a random fraction of NIC links, carry 1/`slow_link_slowdown`
    # of their bandwidth; `node_gpus` names each node's GPU preset (mixed kinds).
    slow_gpus: tuple[int, ...] = ()
    slow_gpu_fraction: float = 0.0
    slow_gpu_slowdown: float = 2.0
    slow_links: tuple[str, ...] = ()
    slow_link_fraction: float = 0.0
    slow_link_slowdown: float = 2.0
    node_gpus: tuple[str, ...] = ()  # one GPU preset name per node; empty: all `gpu`
    variation_seed: int = 0
    name: str = "custom"

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def node_nic_gb_per_s(self) -> float:
        """Injection bandwidth of one node into the network, GB/s per direction."""
        return self.nics_per_node * self.nic_gbit_per_s / 8.0


@dataclass(frozen=True)
class Parallel:
    """How the work is split: 3D parallelism, sharding, schedule, sync."""

    dp: int = 1
    tp: int = 1
    pp: int = 1
    vpp: int = 1  # virtual stages per pipeline rank (interleaved schedule)
    # context parallel (simulator): each sequence split over cp ranks in 2*cp
    # load-balanced causal chunks, attention as a KV ring; mesh pp x dp x cp x tp
    cp: int = 1
    # how attention gets the other cp ranks' keys and values: "ring" (cp - 1
    # send/recv steps behind the blockwise attention) or "allgather" (Llama 3:
    # one exposed all-gather of K, V per block, reduce-scatter of dK, dV)
    cp_method: str = "ring"
    # expert parallel: the routed experts of each MoE block split over groups of
    # `ep` consecutive data-parallel replicas (carved out of dp, as Megatron-Core
    # does); tokens reach their experts by all-to-all. Expert weights are
    # replicated over the dp / ep expert-data-parallel groups and split by tp
    # like the dense FFN (expert tensor parallel = tp)
    ep: int = 1
    # (simulator) the expert all-to-alls of a MoE block hidden behind the same
    # block's attention and shared-expert compute (DeepSeek-V3's dual-batch /
    # Megatron-Core's --moe-a2a-overlap); only the part longer than it is exposed
    ep_overlap: bool = False
    # (simulator) the token dispatcher: "all-to-all" (every token-expert copy
    # sent to its expert's rank: NCCL all-to-all, Megatron's alltoall dispatcher)
    # or "deepep" (DeepEP: a token sent once per destination node over the
    # NICs and fanned out once per destination rank over NVLink there; the
    # combine reduces inside the node first); `sim.expert_parallel`
    ep_dispatch: str = "all-to-all"
    micro_batch: int = 1  # sequences per microbatch per data-parallel replica
    global_batch: int = 8  # sequences per optimizer step
    schedule: str = "1f1b"
    # (simulator) pipeline schedules per step: the replica's micro-batches run
    # as this many separate schedules (flushes) of microbatches / flushes each,
    # every one paying the fill and drain (NeMo AutoModel's gradient
    # accumulation with pp: `ga` schedule steps of local_batch / micro_batch)
    pipeline_flushes: int = 1
    zero: int = 1  # 0 DDP, 1 optimizer states, 2 +grads, 3 +params (FSDP)
    # ZeRO-3 (FSDP2's flag): free each unit's gathered parameters after its forward
    # and all-gather them again for its backward (True, FSDP2's default), or keep
    # them from forward to backward of a micro-batch (False: one gather per
    # micro-batch instead of two, the stage's full parameters in memory). Ignored
    # (accepted, no effect) with zero 0-2, whose parameters stay gathered, and with
    # pp > 1, where pipelining keeps each chunk gathered through the step.
    reshard_after_forward: bool = True
    # ZeRO 1/2 (simulator): the all-gather of the updated parameters after the
    # optimizer step overlaps the next step's first forward, bucket by bucket
    # (Megatron-LM's --overlap-param-gather); only the part longer than that
    # forward is exposed. False: the gather ends the step.
    overlap_param_gather: bool = False
    # HSDP: ZeRO shards over groups of `dp_shard` consecutive data-parallel ranks
    # and replicates across the dp / dp_shard groups (0: shard over all of dp)
    dp_shard: int = 0
    sequence_parallel: bool = True  # only has an effect with tp > 1
    # backward TP all-reduce (SP: reduce-scatter) of the input gradient overlapped
    # with the weight-gradient GEMM (Megatron-LM's async grad all-reduce); the
    # runtime's DTensor TP does not overlap, so it is off by default
    tp_overlap: bool = False
    # (simulator) sequence-parallel all-gathers / reduce-scatters pipelined in tp chunks
    # with the adjacent GEMMs (Megatron-Core --tp-comm-overlap, PyTorch async TP)
    tp_comm_overlap: bool = False
    # none | selective (Megatron: attention core) | full | op (torchtitan per-op
    # SAC) | layer (torchtitan: every 2nd block full); `sandbox.recompute`
    recompute: str = "selective"
    dp_mode: str = "allreduce"
    grad_compression: str = "none"  # none | fp16 | int8 | topk:F | powersgd:R
    sync_every: int = 1  # local-sgd: average parameters every k steps
    ps_servers: int = 0  # parameter-server / async: server ranks (0: one per node)
    # Uneven work (simulator): layers of each pipeline stage (empty: the layout's
    # split, `sandbox.layout.split_blocks`: layers / (pp * vpp) per chunk when it
    # divides, else one block fewer on the first and last chunks); micro-batches
    # of each data-parallel replica per step (empty: equal; they sum to
    # global_batch / micro_batch); sequence length of each replica's
    # sequences (empty: model.seq_len; data skew).
    stage_layers: tuple[int, ...] = ()
    replica_microbatches: tuple[int, ...] = ()
    replica_seq_len: tuple[int, ...] = ()

    @property
    def microbatches(self) -> int:
        """Microbatches per replica per step (gradient-accumulation steps)."""
        return self.global_batch // (self.dp * self.micro_batch)

    @property
    def shard_size(self) -> int:
        """Ranks one ZeRO shard group spans: `dp_shard` (or all dp) data-parallel
        replicas, times the cp context-parallel ranks (which hold the same weights)."""
        return (self.dp_shard or self.dp) * self.cp

    @property
    def compression(self) -> tuple[str, float]:
        """`grad_compression` as (kind, argument): ('topk', 0.01), ('powersgd',
        4.0), ('fp16', 0.0); the values `sandbox.validate` accepts."""
        kind, _, arg = self.grad_compression.partition(":")
        return kind, float(arg) if arg else 0.0


@dataclass(frozen=True)
class Train:
    """The optimisation itself and the run's bookkeeping."""

    precision: str = "bf16"
    optimizer: str = "adamw"
    lr: float = 3e-4
    lr_schedule: str = "cosine"  # cosine (with warmup) | constant
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # max global grad norm (0: off)
    seed: int = 0
    steps: int = 100
    checkpoint_every: int = 0  # steps; 0 = off for runs, auto for simulate --failures
    eval_every: int = 0  # steps; 0 = only at the end
    data: str = "builtin"  # builtin corpus, or a path to .txt / .jsonl files
    compile: bool = False  # torch.compile (GPU only)
    # flash: one fused causal kernel (FlashAttention-2/3, cuDNN / PyTorch SDPA), no s x s
    # tensor stored; eager: matmul, scale-mask-softmax, dropout, matmul over stored s x s
    # scores (Megatron-LM of 2021-22; Korthikanti et al.'s activation formula)
    attention: str = "flash"
    # the flash kernel (sandbox.attention_kernels): fa2 (FlashAttention-2 / PyTorch SDPA,
    # any GPU), fa3 (FlashAttention-3, Hopper), cudnn (cuDNN fused attention as Transformer
    # Engine runs it, Hopper)
    attention_kernel: str = "fa2"
    # precision = "fp8" (simulator; torchao Float8Linear / Transformer Engine):
    # dynamic scaling per tensor ("tensorwise") or per row ("rowwise"), and
    # ZeRO-3 all-gathers of the linear weights in fp8 (torchao's
    # enable_fsdp_float8_all_gather; tensorwise only)
    fp8_recipe: str = "tensorwise"
    fp8_all_gather: bool = False
    # torch.compile also wraps the cross-entropy (torchtitan's build_cross_entropy_loss
    # since 2025): the upcast, log-softmax and its backward fuse, no fp32 logits copy
    # (simulator's memory; needs compile)
    compile_loss: bool = False
