"""Sequence-parallel collectives pipelined with their GEMMs (Megatron-Core
--tp-comm-overlap, PyTorch async TP): closed form of the exposed time."""

import pytest

import sandbox
from sandbox.profile import profile_for
from sandbox.validate import runtime_problems
from sim import compute, simulate
from sim.costs import pipelined_exposed, tp_times
from sim.network.collectives import Coll, collective_time
from sim.network.shared import shared


def _plan(**par):
    return sandbox.load({
        "model": {"preset": "llama3-70b", "layers": 4},
        "cluster": {"preset": "dgx-h100", "nodes": 1},
        "parallel": {"tp": 8, "dp": 1, "micro_batch": 1, "global_batch": 4, **par}})


def _qkv_nk(plan):
    m = plan.model
    return (m.q_dim + 2 * m.kv_dim) // plan.parallel.tp, m.hidden


def test_pipelined_exposed_closed_form():
    assert pipelined_exposed(1.0, 0.0, 4) == pytest.approx(1.0)  # nothing to hide behind
    assert pipelined_exposed(1.0, 8.0, 4) == 0.0  # GEMM pieces longer than each step
    # 3 steps of 1/3 s against GEMM pieces of 0.25 s: 3 x (1/3 - 1/4) exposed
    assert pipelined_exposed(1.0, 1.0, 4) == pytest.approx(3 * (1 / 3 - 1 / 4))


def test_tp_times_pipeline_each_collective_with_its_gemm():
    plain, over = _plan(), _plan(tp_comm_overlap=True)
    prof = profile_for(over.cluster)
    dev = compute.device_of(over, prof)
    topo = shared(over.cluster)
    lt = compute.layer_times(over, dev)
    group = tuple(range(8))
    nbytes = over.model.seq_len * over.model.hidden * 2
    ag = collective_time(topo, Coll("all_gather", group, nbytes), prof)
    rs = collective_time(topo, Coll("reduce_scatter", group, nbytes), prof)
    qkv, out, fc1, fc2 = lt.gemm_fwd
    d_qkv, d_out, d_fc1, d_fc2 = lt.gemm_dgrad
    f, b = tp_times(over, topo, prof, 0, lt)
    assert f == pytest.approx(pipelined_exposed(ag, qkv, 8) + pipelined_exposed(ag, fc1, 8)
                              + pipelined_exposed(rs, out, 8) + pipelined_exposed(rs, fc2, 8))
    assert b == pytest.approx(pipelined_exposed(ag, d_out, 8) + pipelined_exposed(ag, d_fc2, 8)
                              + pipelined_exposed(rs, d_qkv, 8) + pipelined_exposed(rs, d_fc1, 8))
    lt0 = compute.layer_times(plain, dev)
    # the pipelined GEMMs run as tp pieces of M / tp rows: never faster than whole
    m = over.model.seq_len
    assert qkv == pytest.approx(8 * compute.gemm_time(dev, m // 8, *_qkv_nk(over)))
    assert all(a >= b for a, b in zip(lt.gemm_fwd, lt0.gemm_fwd, strict=True))
    f0, b0 = tp_times(plain, topo, prof, 0, lt0)
    assert f0 == pytest.approx(2 * (ag + rs)) and f < f0 and b < b0
    r0, r1 = simulate(plain, timeline=False), simulate(over, timeline=False)
    assert r1.step_time_s < r0.step_time_s
    assert r1.breakdown_s["tp_comm"] < r0.breakdown_s["tp_comm"]


def test_runtime_refuses_tp_comm_overlap():
    assert any("tp_comm_overlap" in p for p in runtime_problems(_plan(tp_comm_overlap=True)))
