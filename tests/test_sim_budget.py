"""The simulator refuses, up front and with its estimate, a plan too large to simulate."""

from __future__ import annotations

import pytest

import sandbox
import sim
from sandbox.errors import SandboxError
from sim.budget import MAX_EVENTS, estimate_events


def _plan(**parallel) -> sandbox.specs.Plan:
    return sandbox.load({"model": {"preset": "gpt3-1.3b"},
                         "cluster": {"preset": "dgx-a100-80g", "nodes": 2},
                         "parallel": {"tp": 2, "pp": 4, "global_batch": 256, **parallel}})


@pytest.mark.parametrize("parallel", [{}, {"pp": 2, "vpp": 2, "schedule": "interleaved-1f1b"},
                                      {"schedule": "zero-bubble"}, {"pp": 1, "tp": 8},
                                      {"zero": 3}, {"zero": 3, "pp": 1, "tp": 1}])
def test_estimate_bounds_the_events_within_a_small_factor(parallel: dict) -> None:
    plan = _plan(**parallel)
    events = sim.simulate(plan, timeline=False).events
    est = estimate_events(plan)
    assert events <= est <= 4 * events + 1000, (events, est)


def test_too_many_microbatches_is_refused_with_the_estimate() -> None:
    plan = _plan(global_batch=2**26, micro_batch=1)
    assert estimate_events(plan) > MAX_EVENTS
    with pytest.raises(SandboxError, match=r"events to simulate .* micro-batches"):
        sim.simulate(plan)


def test_more_gpus_than_the_network_limit_is_refused_with_its_memory() -> None:
    from sim.budget import MAX_GPUS

    plan = sandbox.load({"model": {"preset": "gpt3-1.3b"},
                         "cluster": {"preset": "dgx-a100-80g", "nodes": MAX_GPUS // 8 * 2},
                         "parallel": {"tp": 8, "global_batch": MAX_GPUS * 2 // 8}})
    with pytest.raises(SandboxError, match=r"262,144 GPUs .*at most 131,072; about 4,"):
        sim.simulate(plan)


def test_a_timeline_has_a_lower_event_limit() -> None:
    from sim.budget import MAX_TIMELINE_EVENTS, check_budget

    plan = _plan(global_batch=2**17, micro_batch=1)  # 2**16 micro-batches per replica
    assert MAX_TIMELINE_EVENTS < estimate_events(plan) <= MAX_EVENTS
    check_budget(plan)  # without a timeline it may run
    with pytest.raises(SandboxError, match=r"limit of 2,000,000 with a timeline"):
        check_budget(plan, timeline=True)
    with pytest.raises(SandboxError, match="with a timeline"):
        sim.simulate(plan, timeline=True)


def test_memory_estimate_matches_the_measured_table() -> None:
    from sim.budget import estimate_memory_mb

    for gpus, measured_mb in ((16_384, 343), (65_536, 1235), (131_072, 2426)):
        assert abs(estimate_memory_mb(gpus) / measured_mb - 1) < 0.1
    assert estimate_memory_mb(4, MAX_EVENTS) == pytest.approx(1604, rel=0.1)


def test_search_budget_counts_gpus_times_simulations() -> None:
    from sim.budget import check_search_budget, search_workers

    check_search_budget(1024, 128)
    check_search_budget(16_384, 128)
    with pytest.raises(SandboxError, match=r"use --max-simulations 32 or fewer"):
        check_search_budget(65_536, 128)
    with pytest.raises(SandboxError, match="at most 131,072"):
        check_search_budget(2**20, 1)
    assert search_workers(16, 8) == 8
    assert search_workers(131_072, 16) == 1  # 2.4 GB each: one at a time
