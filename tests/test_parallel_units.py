"""Single-process checks of the parallel building blocks (no process group)."""

from __future__ import annotations

import pytest
import torch
from helpers.parallel import batch, plan_of, train

from runtime.model import build_model
from runtime.parallel.parallelize import parallelize
from runtime.parallel.pipeline import split_model
from runtime.parallel.recompute import apply_recompute


def test_interleaved_stage_layout() -> None:
    plan = plan_of(pp=2, vpp=2, schedule="interleaved-1f1b")
    first = dict(split_model(build_model(plan.model), plan, 0))
    last = dict(split_model(build_model(plan.model), plan, 1))
    assert list(first[0].layers) == ["0"] and list(first[2].layers) == ["2"]
    assert list(last[1].layers) == ["1"] and list(last[3].layers) == ["3"]
    assert first[0].tok_embeddings is not None and first[0].output is None
    assert first[2].tok_embeddings is None and first[2].output is None
    assert last[3].output is not None and last[3].norm is not None
    assert last[3].tok_embeddings is None and last[3].pos_embeddings is None
    # the head keeps its own copy of the (tied) embedding matrix, same initial values
    assert torch.equal(last[3].output.weight, first[0].tok_embeddings.weight)


def test_recompute_modes_train_identically_and_keep_names() -> None:
    runs = {mode: train(plan_of(recompute=mode), steps=3) for mode in ("none", "full")}
    assert runs["full"]["loss"] == pytest.approx(runs["none"]["loss"], rel=1e-6)
    plan = plan_of()
    plain, wrapped = build_model(plan.model), build_model(plan.model)
    apply_recompute(wrapped, "full")
    assert type(wrapped.layers["0"]).__name__ == "CheckpointWrapper"
    assert list(wrapped.state_dict()) == list(plain.state_dict())  # checkpoints unchanged
    with pytest.raises(ValueError, match="parallel.recompute"):
        apply_recompute(plain, "everything")


def test_clip_matches_torch_single_process() -> None:
    plan = plan_of(recompute="none")
    par = parallelize(plan, None, torch.device("cpu"))
    x, y = batch(0, plan)
    par.step(x, y)
    grads = [p.grad.clone() for p in par.parameters()]
    ours = par.clip_grad_norm_(0.5)
    for p, g in zip(par.parameters(), grads, strict=True):
        p.grad = g
    theirs = torch.nn.utils.clip_grad_norm_(par.parameters(), 0.5).item()
    assert ours == pytest.approx(theirs, rel=1e-6)


def test_parallel_plan_needs_a_mesh() -> None:
    with pytest.raises(ValueError, match="needs a DeviceMesh"):
        parallelize(plan_of(dp=2), None, torch.device("cpu"))


def test_uneven_stage_layers_keep_every_block() -> None:
    plan = plan_of(model_fields={"layers": 6}, pp=4, stage_layers=[1, 1, 2, 2])
    held = [[name for _, chunk in split_model(build_model(plan.model), plan, rank)
             for name in chunk.layers] for rank in range(4)]
    assert held == [["0"], ["1"], ["2", "3"], ["4", "5"]]


def test_single_process_has_no_pipeline_or_sync_state() -> None:
    par = parallelize(plan_of(), None, torch.device("cpu"))
    assert par.pipeline is None and par.sync is None and par.side_groups == {}
