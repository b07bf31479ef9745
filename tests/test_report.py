"""Comparison reports: HTML + PNGs, measurements picked up, CLI errors."""

import json
import struct

import pytest

PLAN_A = """[model]
preset = "gpt3-1.3b"
[cluster]
preset = "dgx-a100-80g"
nodes = 2
[parallel]
tp = 2
pp = 2
micro_batch = 1
global_batch = 64
"""
PLAN_B = PLAN_A.replace("tp = 2\npp = 2", "tp = 4\npp = 2\nvpp = 2\n"
                        "schedule = \"interleaved-1f1b\"")


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def plans(tmp_path):
    a, b = tmp_path / "tp2-pp2.toml", tmp_path / "tp4-pp2-v2.toml"
    a.write_text(PLAN_A)
    b.write_text(PLAN_B)
    return [str(a), str(b)]


def test_report_writes_html_and_pngs(plans, tmp_path):
    from sandbox.report import report

    out = tmp_path / "rep"
    # a compare.json from a (pretend) earlier `sandbox compare` in the same folder
    (out / "cmp").mkdir(parents=True)
    (out / "cmp" / "compare.json").write_text(json.dumps(
        {"predicted": {"step_time_s": 1.2}, "measured": {"step_time_s": 1.5},
         "error": {"step_time_s": -0.2}}))
    rep = report(plans, out, scaling=(0.5, 1.0, 2.0))
    names = {p.name for p in rep.pngs}
    assert {"breakdown.png", "memory.png", "scaling.png", "measured.png"} <= names
    assert len(rep.pngs) >= 4
    for p in rep.pngs:
        w, h = png_size(p)
        assert w >= 400 and h >= 250, (p, w, h)
    html = rep.path.read_text()
    assert html.count("<img") == len(rep.pngs)
    assert "tp2-pp2" in html and "tp4-pp2-v2" in html and "<table" in html
    assert list(rep.table.columns) == ["tp2-pp2", "tp4-pp2-v2"]
    assert rep.table.loc["tp", "tp4-pp2-v2"] == 4
    assert rep.measured["error"].iloc[0] == pytest.approx(-0.2)


def test_report_timeline_from_the_simulator(plans, tmp_path):
    import sandbox
    from sandbox.report import timeline_spans

    spans = timeline_spans(sandbox.simulate(sandbox.load(plans[0])))
    assert spans, "the simulator's result exposes no timeline"
    assert len({s["rank"] for s in spans}) >= 2  # both pipeline stages (global ranks)
    assert all(s["end_s"] >= s["start_s"] >= 0 for s in spans)


def test_scaling_curve_changes_world_size(plans):
    import sandbox
    from sandbox.report import scaling_curve

    curve = scaling_curve(sandbox.load(plans[0]), (0.5, 1.0, 2.0))
    assert list(curve["gpus"]) == [8, 16, 32]
    assert list(curve["global_batch"]) == [32, 64, 128]
    assert (curve["tokens_per_s"] > 0).all()


def test_cli_report(cli, plans, tmp_path):
    r = cli("report", *plans, "--out", str(tmp_path / "r"), "--scaling", "1,2")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "r" / "report.html").exists() and "report.html" in r.stdout


@pytest.mark.parametrize("extra,words", [
    (["nope.toml"], ["no such plan file"]),
    (["--scaling", "a,b"], ["--scaling"]),
    (["--scaling", "nan"], ["--scaling", "finite"]),
    (["--scaling", "1e6"], ["--scaling", "GPUs", "limit of 131,072"]),
    (["--scaling", ",".join(["1"] * 17)], ["--scaling", "limit of 16"]),
])
def test_cli_report_bad_input_one_line(cli, plans, tmp_path, extra, words):
    args = [*plans[:1], "--out", str(tmp_path / "r")]
    args = [extra[0], "--out", str(tmp_path / "r")] if extra[0].endswith(".toml") else \
        [*args, *extra]
    r = cli("report", *args)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0]
