"""`sandbox run` refuses every plan field it cannot execute (issue 15): one
line naming the field, a non-zero exit, nothing written to --out. The same
plans are valid for `simulate`, which models them."""

from __future__ import annotations

import pytest

import sandbox
from sandbox.validate import runtime_problems

BASE = {"model": {"preset": "tiny"}, "cluster": {"preset": "localhost"},
        "parallel": {"global_batch": 8, "micro_batch": 2}}
TWO_NODES = {"preset": "localhost", "nodes": 2, "gpus_per_node": 1}

# field -> (plan sections changed from BASE); each makes exactly that field unexecutable
REFUSED = {
    "parallel.replica_microbatches": {"parallel": {"dp": 2, "replica_microbatches": [1, 3]}},
    "parallel.replica_seq_len": {"parallel": {"dp": 2, "replica_seq_len": [64, 32]}},
    "parallel.tp_overlap": {"parallel": {"tp": 2, "tp_overlap": True}},
    "parallel.cp": {"model": {"preset": "tiny-mla"}, "parallel": {"cp": 2}},  # MLA x cp
    "parallel.ps_servers": {"parallel": {"dp": 2, "zero": 0, "dp_mode": "parameter-server",
                                         "ps_servers": 1}},
    "parallel.dp_shard": {"cluster": {"preset": "localhost", "gpus_per_node": 4},
                          "parallel": {"dp": 4, "zero": 1, "dp_shard": 2}},
    "cluster.slow_gpus": {"cluster": {"slow_gpus": [0]}},
    "cluster.slow_gpu_fraction": {"cluster": {"slow_gpu_fraction": 0.5}},
    "cluster.slow_links": {"cluster": {"slow_links": ["nvlink:0"]}},
    "cluster.slow_link_fraction": {"cluster": {**TWO_NODES, "slow_link_fraction": 0.5},
                                   "parallel": {"dp": 2}},
    "cluster.node_gpus": {"cluster": {**TWO_NODES, "node_gpus": ["h100-sxm", "a100-80g"]},
                          "parallel": {"dp": 2}},
}


def plan_dict(changes: dict) -> dict:
    return {k: {**BASE.get(k, {}), **changes.get(k, {})} for k in {*BASE, *changes}}


def toml_of(d: dict) -> str:
    import tomli_w

    return tomli_w.dumps(d)


@pytest.mark.parametrize("field", list(REFUSED))
def test_runtime_problems_name_the_field(field: str) -> None:
    plan = sandbox.load(plan_dict(REFUSED[field]))  # a valid plan: simulate accepts it
    problems = runtime_problems(plan)
    assert len(problems) == 1 and problems[0].startswith(f"{field}:"), problems


@pytest.mark.parametrize("field", list(REFUSED))
def test_run_refuses_with_one_line_and_writes_nothing(cli, tmp_path, field: str) -> None:
    path, out = tmp_path / "plan.toml", tmp_path / "out"
    path.write_text(toml_of(plan_dict(REFUSED[field])))
    r = cli("run", str(path), "--out", str(out))
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(lines) == 1 and field in lines[0], r.stderr
    assert not out.exists()


def test_fields_equal_to_their_defaults_are_accepted() -> None:
    plan = sandbox.load(plan_dict({"parallel": {"dp": 2, "replica_microbatches": [2, 2],
                                                "replica_seq_len": [64, 64]}}))
    assert runtime_problems(plan) == []
    uneven = sandbox.load(plan_dict({"model": {"preset": "tiny", "layers": 6},
                                     "parallel": {"pp": 4, "stage_layers": [1, 1, 2, 2]}}))
    assert runtime_problems(uneven) == []  # uneven stages run exactly (runtime.pipeline)
