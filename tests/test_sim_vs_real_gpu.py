"""experiments.sim_vs_real_gpu: its plans, its refusal without CUDA, and
the whole pipeline on the CPU (`--device cpu`, a tiny model)."""

import json
import math
from pathlib import Path

import pytest

from experiments import sim_vs_real_gpu

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def svr():
    return sim_vs_real_gpu


def test_plans_cover_the_shapes(svr):
    import sandbox

    p = sandbox.load(svr.plan_dict("gpt3-1.3b", "mb16-s4", "", "cuda"))
    assert (p.model.seq_len, p.parallel.micro_batch, p.parallel.global_batch) == (512, 16, 32)
    assert p.world_size == 1 and p.train.precision == "bf16"
    p = sandbox.load(svr.plan_dict("gpt2-124m", "mb8", "", "cpu"))
    assert (p.model.seq_len, p.parallel.microbatches, p.train.precision) == (1024, 2, "fp32")


def test_refuses_without_cuda_and_bad_shapes(svr, monkeypatch, tmp_path, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert svr.main(["--out", str(tmp_path / "x")]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert svr.main(["--device", "cpu", "--shapes", "mb3", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown shape 'mb3'" in err and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing written


def test_cpu_pipeline_measures_predicts_and_writes(svr, tmp_path, monkeypatch):
    out = tmp_path / "gpu"
    profile = ROOT / "experiments" / "results" / "cpu_profile.toml"
    rc = svr.main(["--device", "cpu", "--models", "tiny", "--shapes", "mb1", "--steps", "4",
                   "--profile", str(profile), "--out", str(out)])
    assert rc == 0
    d = json.loads(out.with_suffix(".json").read_text())
    (row,) = d["rows"]
    assert row["measured_step_s"] > 0 and row["predicted_step_s"] > 0
    assert math.isfinite(row["error"])
    assert row["error"] == pytest.approx(row["predicted_step_s"] / row["measured_step_s"] - 1)
    assert d["summary"]["plans"] == 1
    assert d["summary"]["meets_target"] == (abs(row["error"]) <= 0.10)
    assert "every plan within 10%" in out.with_suffix(".md").read_text()
    # the measurement is cached: a second call predicts again without running
    cached = json.loads(out.with_name("gpu_measured.json").read_text())
    assert set(cached) == {"tiny/mb1"}

    def no_run(*a):
        raise AssertionError("measured again")

    monkeypatch.setattr(svr, "measure_one", no_run)
    assert svr.main(["--device", "cpu", "--models", "tiny", "--shapes", "mb1",
                     "--profile", str(profile), "--out", str(out)]) == 0
    again = json.loads(out.with_suffix(".json").read_text())["rows"][0]
    assert again["measured_step_s"] == row["measured_step_s"]
