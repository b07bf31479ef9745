"""Load balancing: layers to stages and micro-batches to replicas by speed."""

import itertools
import random

import pytest

import sandbox
from sim import balance, simulate


def load(cluster=None, attention="flash", **par):
    base = {"tp": 1, "pp": 1, "global_batch": 16, "micro_batch": 1, "zero": 0}
    return sandbox.load({"model": {"preset": "gpt3-1.3b"},
                         "cluster": {"preset": "dgx-a100-80g", "nodes": 1, "gpus_per_node": 4,
                                     **(cluster or {})},
                         "parallel": {**base, **par}, "train": {"attention": attention}})


def test_min_max_split_is_optimal():
    rng = random.Random(0)
    for _ in range(40):
        bins = rng.randint(1, 4)
        unit = [rng.uniform(0.5, 3) for _ in range(bins)]
        fixed = [rng.uniform(0, 2) for _ in range(bins)]
        total = rng.randint(bins, 9)
        got = balance.min_max_split(unit, fixed, total)
        assert sum(got) == total and min(got) >= 1

        def worst(n, fixed=fixed, unit=unit):
            return max(f + k * u for f, k, u in zip(fixed, n, unit, strict=True))
        best = min(worst(n) for n in itertools.product(range(1, total + 1), repeat=bins)
                   if sum(n) == total)
        assert worst(got) == pytest.approx(best)


def test_slow_stage_gets_fewer_layers_and_the_step_wins_back():
    fast = load(pp=4)
    slow = load(pp=4, cluster={"slow_gpus": [2], "slow_gpu_slowdown": 2.0})
    layers = balance.stage_layers(slow)
    assert sum(layers) == 24 and layers[2] == min(layers) and layers[2] < 6
    w = balance.win(slow)
    assert w["stage_layers"] == layers and w["replica_microbatches"] == []
    assert w["balanced_step_time_s"] < 0.8 * w["step_time_s"]
    # one GPU at half speed leaves 3.5 GPUs' worth: 4 / 3.5 of the balanced fast step
    t_fast = simulate(balance.balanced(fast)).step_time_s
    assert w["balanced_step_time_s"] / t_fast == pytest.approx(4 / 3.5, rel=0.05)


def test_slow_replica_gets_fewer_microbatches():
    """Pure data parallel, replica 2 at half speed: it gets about half the
    micro-batches; the step is bounded by the busiest replica's share."""
    slow = load(global_batch=64, cluster={"slow_gpus": [2], "slow_gpu_slowdown": 2.0})
    mbs = balance.replica_microbatches(slow)
    assert sum(mbs) == 64 and mbs[2] == min(mbs)
    assert abs(2 * mbs[2] - mbs[0]) <= 2
    r = simulate(balance.balanced(slow), dp_overlap=False)
    even = simulate(load(global_batch=64), dp_overlap=False)  # 16 each at full speed
    t_mb, opt = even.breakdown_s["compute"] / 16, even.breakdown_s["optimizer"]
    busiest = max(max(mbs[:2] + mbs[3:]), 2 * mbs[2])
    # the reduction starts after the busiest replica; the slow GPU's optimizer is 2x
    assert r.step_time_s - even.step_time_s == pytest.approx((busiest - 16) * t_mb + opt,
                                                             rel=1e-9)
    assert r.step_time_s < 0.7 * simulate(slow, dp_overlap=False).step_time_s


def test_skewed_replicas_rebalanced_by_tokens():
    """Replicas with longer sequences get fewer micro-batches; tokens/s rises
    (eager attention: the s x s softmax makes long sequences dearer per token)."""
    skew = load(global_batch=64, replica_seq_len=[2048, 2048, 1024, 512], attention="eager")
    mbs = balance.replica_microbatches(skew)
    assert mbs[0] == mbs[1] < mbs[2] < mbs[3]
    w = balance.win(skew)
    assert w["balanced_tokens_per_s"] > 1.3 * w["tokens_per_s"]


def test_balanced_plan_is_valid_and_symmetric_plans_stay_even():
    even = load(global_batch=64)
    assert balance.replica_microbatches(even) == [16] * 4
    b = balance.balanced(load(pp=2, global_batch=64, cluster={"slow_gpus": [3]}))
    assert sandbox.load(b.to_toml()) == b
    assert sum(b.parallel.stage_layers) == 24 and sum(b.parallel.replica_microbatches) == 64
