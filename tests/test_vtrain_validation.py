"""experiments/validate_vtrain.py and its diagnostics (vtrain_diagnostics.py):
the diagnostics' arithmetic on hand-made rows, and the script end to end on the
first rows of each CSV."""

import importlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def modules():
    sys.path.insert(0, str(ROOT))
    try:
        yield (importlib.import_module("experiments.vtrain_diagnostics"),
               importlib.import_module("experiments.validate_vtrain"))
    finally:
        sys.path.remove(str(ROOT))


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
    md = "\n".join(diag.markdown(rows, key))
    assert "| m | 4 | 2 | 10.00 / 9.00 | 14.00 / 8.50 | 8.10 / 8.00 |" in md


def test_validate_vtrain_end_to_end(modules, tmp_path, capsys):
    _, vv = modules
    out = tmp_path / "vtrain"
    assert vv.main(["--limit", "4", "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    multi = data["rows"]["multi-node"]
    assert len(multi) == 4 and all(r["predicted_s"] > 0 for r in multi)
    for r in multi:  # error is predicted / measured - 1, never copied from the CSV
        assert r["error"] == pytest.approx(r["predicted_s"] / r["measured_s"] - 1)
    summary = data["summary"]["multi-node"]
    assert {"mape", "spearman_by_model", "tp_ladders", "single_cause_factors"} <= set(summary)
    md = out.with_suffix(".md").read_text()
    assert "what one cause would have to be" in md and out.with_suffix(".png").stat().st_size
