"""Pipeline schedules in the event engine against their closed forms."""

import pytest

import sandbox
from sandbox.profile import Profile
from sim import engine, lowering
from sim.network import topology
from sim.schedules import schedule
from sim.work import OpCost

TF, TB = 1.0, 2.0  # seconds per stage (whole stage, one microbatch)


def work_of(p: int, m: int, sched: str = "1f1b", v: int = 1, w_split: float = 0.0):
    """A lowered plan whose stages all cost TF forward and TB backward (split
    into chunks of 1/v), with free pipeline sends and no optimizer."""
    plan = sandbox.load({"model": {"preset": "tiny", "layers": 4 * p * v},
                         "cluster": {"preset": "dgx-a100-80g", "nodes": 1, "gpus_per_node": p},
                         "parallel": {"pp": p, "vpp": v, "schedule": sched,
                                      "global_batch": m, "micro_batch": 1}})
    topo = topology.build(plan.cluster)
    work = lowering.lower(plan, topo, Profile())
    for key in work.cost:
        kind = key[2]
        t = {"F": TF, "B": TB * (1 - w_split), "W": TB * w_split}[kind] / v
        work.cost[key] = OpCost(t, 0.0)
    work.send_s = 0.0
    work.optimizer_s = [0.0] * p
    return work, topo


@pytest.mark.parametrize("p,m", [(2, 4), (4, 8), (4, 16), (8, 8)])
def test_1f1b_bubble_closed_form(p, m):
    work, topo = work_of(p, m)
    res = engine.run(work, topo)
    assert res.step_time_s == pytest.approx((m + p - 1) * (TF + TB))
    for st in res.stats.values():  # idle waiting for peers, plus idle after its last op
        idle = st.bubble + res.step_time_s - st.finish
        assert idle / res.step_time_s == pytest.approx((p - 1) / (m + p - 1))


def test_gpipe_has_the_same_bubble_as_1f1b():
    p, m = 4, 8
    a, topo = work_of(p, m, "gpipe")
    b, _ = work_of(p, m, "1f1b")
    assert engine.run(a, topo).step_time_s == pytest.approx(engine.run(b, topo).step_time_s)


@pytest.mark.parametrize("v", [2, 4])
def test_interleaving_shrinks_the_bubble_by_v(v):
    p, m = 4, 8
    work, topo = work_of(p, m, "interleaved-1f1b", v)
    res = engine.run(work, topo)
    bubble = (p - 1) * (TF + TB) / v
    assert res.step_time_s == pytest.approx(m * (TF + TB) + bubble)


@pytest.mark.parametrize("p,m", [(4, 8), (4, 16), (8, 16)])
def test_zero_bubble_h1_bubble_closed_form(p, m):
    """ZB-H1's bubble is (p-1)(TF + TB_input - TW) (Qi et al. 2024), here with
    the backward split evenly into input- and weight-gradient halves."""
    zb, topo = work_of(p, m, "zero-bubble", w_split=0.5)
    base, _ = work_of(p, m, "1f1b")
    t_zb, t_1f1b = engine.run(zb, topo).step_time_s, engine.run(base, topo).step_time_s
    assert t_zb == pytest.approx(m * (TF + TB) + (p - 1) * (TF + TB / 2 - TB / 2))
    assert t_zb < t_1f1b


@pytest.mark.parametrize("name", ["gpipe", "1f1b", "zero-bubble"])
@pytest.mark.parametrize("p,m", [(2, 3), (4, 8), (4, 2)])
def test_schedules_run_every_op_once(name, p, m):
    for rank in range(p):
        ops = schedule(name, p, m, rank)
        kinds = ("F", "B", "W") if name == "zero-bubble" else ("F", "B")
        for k in kinds:
            assert sorted(i for kk, i, _ in ops if kk == k) == list(range(m))


def test_interleaved_order_runs_every_chunk():
    p, m, v = 4, 8, 3
    for rank in range(p):
        ops = schedule("interleaved-1f1b", p, m, rank, v)
        assert len(ops) == 2 * m * v
        assert {(i, c) for k, i, c in ops if k == "F"} == {(i, c) for i in range(m)
                                                           for c in range(v)}


def test_send_time_is_exposed_on_the_critical_path():
    """A pipeline send of d seconds delays each hop of the fill and drain."""
    p, m = 4, 8
    work, topo = work_of(p, m)
    base = engine.run(work, topo).step_time_s
    work.send_s = 0.1
    slower = engine.run(work, topo).step_time_s
    assert slower > base
    assert slower <= base + 2 * (p - 1) * 0.1 * m  # bounded by every send exposed
