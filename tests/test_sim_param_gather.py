"""ZeRO 1/2 parameter all-gather overlapped with the next step's first forward
(Megatron-LM's --overlap-param-gather): only the excess is exposed."""

import sandbox
from sandbox.profile import profile_for
from sandbox.validate import runtime_problems
from sim import compute, simulate
from sim.costs import stage_costs
from sim.network.shared import shared


def _plan(overlap: bool, mb: int = 1):
    return sandbox.load({
        "model": {"preset": "llama3-8b", "seq_len": 4096, "layers": 8},
        "cluster": {"preset": "dgx-h100", "nodes": 2},
        "parallel": {"dp": 8, "tp": 2, "micro_batch": mb, "global_batch": 16 * mb, "zero": 1,
                     "recompute": "selective", "overlap_param_gather": overlap}})


def test_exposed_gather_is_the_part_beyond_the_first_forward():
    plain, over = _plan(False), _plan(True)
    r0 = simulate(plain)
    r1 = simulate(over, timeline=False)
    gather = [s for s in r0.timeline if s["kind"] == "param_allgather" and s["rank"] == 0]
    assert len(gather) == 1
    g = gather[0]["end_s"] - gather[0]["start_s"]
    prof = profile_for(plain.cluster)
    dev = compute.device_of(plain, prof)
    cost, _ = stage_costs(plain, shared(plain.cluster), prof, [dev], [1.0], [8])
    first_f = cost[(0, 0, "F")].compute_s + cost[(0, 0, "F")].tp_s
    hidden = min(g, first_f)
    assert hidden > 0
    assert abs((r0.step_time_s - r1.step_time_s) - hidden) < 1e-9
    assert abs((r0.breakdown_s["dp_comm"] - r1.breakdown_s["dp_comm"]) - hidden) < 1e-9


def test_runtime_refuses_overlap_param_gather():
    assert any("overlap_param_gather" in p for p in runtime_problems(_plan(True)))
    assert not any("overlap_param_gather" in p for p in runtime_problems(_plan(False)))
