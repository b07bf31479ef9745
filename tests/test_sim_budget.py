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
                                      {"schedule": "zero-bubble"}, {"pp": 1, "tp": 8}])
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
