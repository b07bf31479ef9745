"""experiments.validate_vtrain and its diagnostics (vtrain_diagnostics):
the diagnostics' arithmetic on hand-made rows, and the script end to end on the
first rows of each CSV."""

import json

import pytest

from experiments import validate_vtrain, vtrain_diagnostics


@pytest.fixture(scope="module")
def modules():
    return vtrain_diagnostics, validate_vtrain


def row(tp, pp, mb, measured, predicted, **breakdown):
    parts = {"compute": 0.0, "tp_comm": 0.0, "pp_comm": 0.0, "dp_comm": 0.0} | breakdown
    return {"model": "m", "tp": tp, "dp": 8 // tp, "pp": pp, "micro_batch": mb,
            "measured_s": measured, "predicted_s": predicted, "breakdown_s": parts}


def key(r):
    return r["model"]


def test_single_cause_factor(modules):
    diag, _ = modules
    r = row(2, 1, 1, measured=12.0, predicted=10.0, compute=8.0, tp_comm=1.0)
    assert diag.single_cause_factor(r, "tp_comm") == pytest.approx(3.0)  # 1 s more -> 3 s
    assert diag.single_cause_factor(r, "compute") == pytest.approx(1.25)
    assert diag.single_cause_factor(r, "dp_comm") is None                # none to scale
    fast = row(2, 1, 1, measured=9.0, predicted=10.0, compute=8.0, tp_comm=1.0)
    groups = diag.single_cause_factors([r, fast], key)
    assert groups[0]["factors"]["tp_comm"] == pytest.approx((0.0, 3.0))
    assert groups[0]["factors"]["pp_comm"] is None


def test_tp_ladders_need_three_tp_degrees_of_one_stage(modules):
    diag, _ = modules
    rows = [row(1, 4, 2, 10.0, 9.0), row(2, 4, 2, 14.0, 8.5), row(4, 4, 2, 8.0, 8.0),
            row(4, 4, 2, 8.2, 8.0),                        # a repeat: averaged
            row(1, 4, 4, 11.0, 10.0), row(2, 4, 4, 9.0, 9.0)]  # two degrees: no ladder
    ladders = diag.tp_ladders(rows, key)
    assert len(ladders) == 1
    lad = ladders[0]
    assert (lad["pp"], lad["micro_batch"]) == (4, 2)
    assert list(lad["points"]) == [1, 2, 4]
    assert lad["points"][4]["measured_s"] == pytest.approx(8.1)
    summary = diag.summarize(rows, key) | {"spearman_by_model": {"m": 0.5}, "models": {"m": 6}}
    md = "\n".join(diag.markdown(summary))
    assert "| m | 4 | 2 | 10.00 / 9.00 | 14.00 / 8.50 | 8.10 / 8.00 |" in md


MULTI = """Parameters (billion),# GPUs,global batch,micro batch,hidden size,attention heads,\
# layers,sequence length,tensor parallelism,data parallelism,pipeline parallelism,\
iteration time (ms)
3.6,64,512,8,3072,32,30,2048,1,64,1,3566.5
3.6,64,512,8,3072,32,30,2048,2,32,1,3975.2
3.6,64,512,4,3072,32,30,2048,1,32,2,4379.0
3.6,64,512,16,3072,32,30,2048,4,16,1,4490.0
"""
SINGLE = """# GPUs,global batch,micro batch,hidden size,attention heads,# layers,\
sequence length,tensor parallelism,data parallelism,pipeline parallelism,iteration time (ms)
2,16,8,1024,16,24,1024,1,1,2,372.160408
8,32,4,1024,16,24,1024,2,2,2,219.732754
4,16,4,1024,16,24,1024,2,2,1,250.0
"""


def test_spearman_under_noise(modules):
    diag, _ = modules
    rows = [row(1, 1, 1, measured=t, predicted=t) for t in (1.0, 1.5, 2.0, 3.0, 5.0)]
    tight = diag.spearman_under_noise(rows, key, sigmas=(1e-6,), draws=20)
    assert tight["m"]["1e-06"] == pytest.approx(1.0)     # no noise: the same order
    loose = diag.spearman_under_noise(rows, key, sigmas=(0.05, 2.0), draws=200)
    assert loose["m"]["2"] < loose["m"]["0.05"] <= 1.0  # more noise, less rank agreement
    again = diag.spearman_under_noise(rows, key, sigmas=(0.05, 2.0), draws=200)
    assert again == loose                                # seeded


def test_validate_vtrain_end_to_end(modules, tmp_path):
    """The script on four multi-node and three single-node rows written here (in
    the CSVs' format; the real ones live in ../shared, not in this checkout)."""
    _, vv = modules
    data = tmp_path / "validation"
    data.mkdir()
    (data / "vtrain_multi_node.csv").write_text(MULTI)
    (data / "vtrain_single_node.csv").write_text(SINGLE)
    out = tmp_path / "vtrain"
    assert vv.main(["--data", str(data), "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    multi = result["rows"]["multi-node"]
    assert len(multi) == 4 and len(result["rows"]["single-node"]) == 3
    assert multi[1]["measured_s"] == pytest.approx(3.9752)
    for r in multi:  # error is predicted / measured - 1 of a real simulation
        assert r["predicted_s"] > 0 and r["events"] > 0
        assert r["error"] == pytest.approx(r["predicted_s"] / r["measured_s"] - 1)
    assert multi[0]["breakdown_s"]["tp_comm"] == 0 < multi[1]["breakdown_s"]["tp_comm"]  # tp 1, 2
    summary = result["summary"]["multi-node"]
    assert {"mape", "spearman_by_model", "tp_ladders", "single_cause_factors"} <= set(summary)
    md = out.with_suffix(".md").read_text()
    assert "what one cause would have to be" in md and out.with_suffix(".png").stat().st_size


def test_validate_vtrain_missing_data_is_one_line(modules, tmp_path, capsys):
    _, vv = modules
    assert vv.main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "vtrain_multi_node.csv" in err
