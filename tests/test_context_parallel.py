"""Context parallelism (`parallel.cp`, issue 19's simulator half): the mesh
pp x dp x cp x tp, the validation rules, the ring's KV bytes and exposed
seconds in closed form, memory / cp, gradients over dp x cp."""

from __future__ import annotations

import pytest

import sandbox
from sandbox import memory
from sandbox.errors import PlanError
from sandbox.layout import cp_chunks, local_seq_len, rank_of, shard_groups
from sandbox.profile import profile_for
from sandbox.validate import runtime_problems
from sim import compute, simulate
from sim.context_parallel import cp_times, kv_chunk_bytes, ring_exposed_s, ring_transfer_s
from sim.network.collectives import Coll, collective_time
from sim.network.shared import shared


def llama8b(cp: int, seq: int = 32768, dp: int | None = None, **cluster) -> sandbox.Plan:
    dp = 8 // cp if dp is None else dp
    return sandbox.load({"model": {"preset": "llama3-8b", "seq_len": seq},
                         "cluster": {"preset": "dgx-h100", "nodes": 1, **cluster},
                         "parallel": {"cp": cp, "dp": dp, "micro_batch": 1, "global_batch": dp,
                                      "zero": 1, "recompute": "full"}})


def test_rank_of_order_is_pp_dp_cp_tp_with_tp_innermost():
    plan = sandbox.load({"model": {"preset": "tiny"},
                         "cluster": {"preset": "localhost", "gpus_per_node": 16},
                         "parallel": {"pp": 2, "dp": 2, "cp": 2, "tp": 2, "global_batch": 8}})
    order = [rank_of(plan, d, s, t, c) for s in range(2) for d in range(2) for c in range(2)
             for t in range(2)]
    assert order == list(range(16))
    assert rank_of(plan, 1, 0, 1) == rank_of(plan, 1, 0, 1, 0) == 5  # cp_rank defaults to 0
    # every dp x cp rank of stage 1, tp rank 1: the gradient / ZeRO group
    assert shard_groups(plan, 1)[1] == (9, 11, 13, 15)


def test_world_size_is_pp_dp_cp_tp():
    with pytest.raises(PlanError) as e:
        llama8b(cp=2, dp=2)
    assert len(e.value.problems) == 1
    assert e.value.problems[0].startswith("parallel: pp*dp*cp*tp = 1*2*2*1 = 4 != world size 8")
    assert llama8b(cp=2).parallel.dp == 4
    derived = sandbox.load({"model": {"preset": "llama3-8b"},
                            "cluster": {"preset": "dgx-h100", "nodes": 1},
                            "parallel": {"cp": 4, "tp": 2, "global_batch": 4}})
    assert derived.parallel.dp == 1  # dp = world / (tp * pp * cp)


def test_sequence_must_split_into_2cp_chunks_and_cp_needs_allreduce():
    with pytest.raises(PlanError) as e:
        llama8b(cp=8, seq=8200)  # 8200 = 16 * 512.5
    assert e.value.problems == ["model.seq_len: 8200 tokens do not split into 2*cp = 16 equal "
                                "chunks (context parallelism's causal load balance)"]
    with pytest.raises(PlanError) as e:
        sandbox.load({**llama8b(cp=2).to_dict(), "parallel": {
            "cp": 2, "dp": 4, "global_batch": 4, "zero": 0, "dp_mode": "local-sgd"}})
    assert e.value.problems == ["parallel.cp: context parallelism needs dp_mode = 'allreduce', "
                                "got 'local-sgd'"]
    with pytest.raises(PlanError, match="parallel.cp: must be positive"):
        llama8b(cp=0, dp=8)


def test_runtime_runs_cp():  # runtime.parallel.context; tests/test_cp_runtime.py
    assert runtime_problems(llama8b(cp=2)) == []
    assert runtime_problems(llama8b(cp=1)) == []


@pytest.mark.parametrize("cp", [2, 4, 8])
def test_causal_balance_gives_every_rank_equal_work(cp: int):
    """Query-key pairs under the causal mask of each rank's two chunks (chunk
    i of 2cp, n tokens each, sees i full chunks and the half of its own):
    equal for every rank, 1/cp of the sequence's."""
    n = 16  # tokens per chunk
    def pairs(chunk: int) -> int:
        return chunk * n * n + n * (n + 1) // 2
    work = [sum(pairs(k) for k in cp_chunks(cp, r)) for r in range(cp)]
    assert sorted(k for r in range(cp) for k in cp_chunks(cp, r)) == list(range(2 * cp))
    s = 2 * cp * n
    assert work == [s * (s + 1) // 2 // cp] * cp


def test_ring_kv_bytes_and_exposed_seconds_closed_form():
    plan = llama8b(cp=4)
    m = plan.model
    assert local_seq_len(plan) == 32768 // 4
    assert kv_chunk_bytes(plan) == 1 * (32768 / 4) * 2 * m.kv_dim * 2  # b s/cp 2 kv_dim, bf16
    # compute covers the transfer: nothing exposed but the final hop
    assert ring_exposed_s(2.0, 1.5, 4) == 0.0
    assert ring_exposed_s(2.0, 1.5, 4, final_s=0.5) == 0.5
    # the transfer is longer: each of the cp - 1 steps exposes the excess
    assert ring_exposed_s(1.0, 1.5, 4) == pytest.approx(3 * 0.5)
    assert ring_exposed_s(1.0, 9.0, 1) == 0.0


@pytest.mark.parametrize("link_gb_per_s", [450.0, 0.05])
def test_block_ring_exposure_matches_closed_form(link_gb_per_s: float):
    """cp 8 inside one node: every GPU sends one chunk to the next over its own
    NVLink port, so a ring step takes one pair's transfer; the forward exposes
    (cp-1) max(0, t_kv - attn/cp), the backward (cp-1) max(0, t_2kv - 2 attn/cp)
    + t_kv."""
    plan = llama8b(cp=8, intra_node_gb_per_s=link_gb_per_s)
    prof = profile_for(plan.cluster)
    topo = shared(plan.cluster)
    lt = compute.layer_times(plan, compute.device_of(plan, prof))
    kv = kv_chunk_bytes(plan)
    pair = (rank_of(plan, 0, 0, 0, 0), rank_of(plan, 0, 0, 0, 1))
    t_kv = collective_time(topo, Coll("send_recv", pair, kv), prof)
    t_2kv = collective_time(topo, Coll("send_recv", pair, 2 * kv), prof)
    assert ring_transfer_s(plan, topo, prof, 0, kv) == pytest.approx(t_kv)
    fwd, bwd = cp_times(plan, topo, prof, 0, lt)
    assert fwd == pytest.approx(7 * max(0.0, t_kv - lt.attn_core / 8))
    assert bwd == pytest.approx(7 * max(0.0, t_2kv - 2 * lt.attn_core / 8) + t_kv)
    if link_gb_per_s > 1:
        assert fwd == 0.0  # NVLink: the attention block hides the KV transfer
    else:
        assert fwd > 0.0


def test_memory_divides_by_cp_and_zero_shards_over_dp_cp():
    one, four = memory.memory_per_gpu(llama8b(cp=1)), memory.memory_per_gpu(llama8b(cp=4))
    assert four["activations"] == pytest.approx(one["activations"] / 4)
    assert four["other"] == pytest.approx(one["other"] / 4)  # logits of s / cp tokens
    # ZeRO-1 over dp x cp = 8 either way: the same shards
    assert four["optimizer"] == pytest.approx(one["optimizer"])
    assert four["params"] == pytest.approx(one["params"])


def test_llama3_8b_cp8_at_131k_simulates_and_fits():
    # on H200s: at 131k tokens the fp32 cross-entropy working set (12 bytes per
    # logit, 25 GB) and ZeRO-1's unsharded fp32 gradients overflow an 80 GB H100
    r = simulate(llama8b(cp=8, seq=131072, preset="dgx-h200"))
    assert r.fits and r.world_size == 8
    assert "cp_comm" in r.breakdown_s and r.breakdown_s["cp_comm"] > 0
    ring = [x for x in r.timeline if x["stream"] == "cp_ring"]
    assert sum(x["end_s"] - x["start_s"] for x in ring) == pytest.approx(r.breakdown_s["cp_comm"])
    assert sum(r.breakdown_s.values()) == pytest.approx(r.step_time_s)
    assert r.extra["cp"] == 8 and r.extra["cp_bytes_per_gpu"] > 0
    # gradients are reduced over the 8 cp ranks (dp = 1): as many bytes as dp = 8
    dp8 = simulate(llama8b(cp=1, seq=8192), timeline=False)
    assert r.extra["dp_bytes_per_gpu"] == pytest.approx(dp8.extra["dp_bytes_per_gpu"])
    assert "cp_comm" not in dp8.breakdown_s
    assert not simulate(llama8b(cp=1, seq=131072), timeline=False).fits
