"""The report's titles and its computed "why" under each figure (issue 22), and the
demo's plans: one model split three ways, each losing its time to a different cost."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import ROOT

import sandbox
from sandbox import report_notes as notes
from sandbox.commands.demo import three_ways
from sandbox.report import context_title, report


@pytest.fixture(scope="module")
def ways() -> dict:
    plans = three_ways()
    return {n: (p, sandbox.simulate(p).to_dict()) for n, p in plans.items()}


def test_largest_overhead_ignores_compute() -> None:
    assert notes.largest_overhead({"compute": 5.0, "tp_comm": 1.0, "bubble": 2.0}) == (
        "bubble", 2.0)
    assert notes.largest_overhead({"compute": 5.0, "dp_comm": 0.0}) == ("", 0.0)


def test_breakdown_note_names_fastest_and_each_cost() -> None:
    results = [{"step_time_s": 10.0, "breakdown_s": {"compute": 8.0, "tp_comm": 2.0}},
               {"step_time_s": 8.0, "breakdown_s": {"compute": 6.0, "bubble": 2.0}},
               {"step_time_s": 6.0, "breakdown_s": {"compute": 6.0, "dp_comm": 0.001}}]
    text = notes.breakdown_note(["A", "B", "C"], results)
    assert text.startswith("Fastest: C at 6.00 s")
    assert "A loses 20.0% to TP communication (tensor-parallel all-reduces" in text
    assert "B loses 25.0% to the bubble" in text
    assert "C is all compute" in text


def test_memory_note_least_most_and_misfits() -> None:
    mems = [{"params": 1.0, "activations": 9.0, "total": 10.0},
            {"params": 2.0, "activations": 3.0, "total": 5.0}]
    text = notes.memory_note(["big", "small"], mems, [False, True])
    assert "small needs the least memory per GPU (4.7 GiB)" in text
    assert "big the most (9.3 GiB), 90.0% of it activations" in text
    assert text.endswith("does not fit: big.")


def test_scaling_note_is_the_per_gpu_ratio() -> None:
    df = pd.DataFrame({"gpus": [8, 16], "tokens_per_s": [800.0, 1200.0], "mfu": [0.5, 0.4]})
    assert "a 75%" in notes.scaling_note({"a": df})
    assert "from 8 to 16 GPUs" in notes.scaling_note({"a": df})


def test_three_ways_each_lose_to_a_different_cost(ways) -> None:
    """The demo's comparison teaches: TP pays in all-reduces, PP in the bubble,
    ZeRO-3 hides its gathers and is the fastest of the three."""
    worst = {n: notes.largest_overhead(d["breakdown_s"])[0] for n, (_, d) in ways.items()}
    assert worst["tensor parallel"] == "tp_comm"
    assert worst["pipeline parallel"] == "bubble"
    steps = {n: d["step_time_s"] for n, (_, d) in ways.items()}
    assert min(steps, key=steps.get) == "sharded data parallel"
    assert all(d["fits"] for _, d in ways.values())


def test_report_titles_and_notes(ways, tmp_path) -> None:
    plans = [p for p, _ in ways.values()]
    assert context_title(plans) == "llama2-13b on 32 x A100 80GB (dgx-a100-80g)"
    rep = report(plans, tmp_path, names=list(ways), scaling=(),
                 results=[sandbox.simulate(p) for p in plans])
    assert set(rep.notes) == {"breakdown.png", "memory.png", "timeline_1.png",
                              "timeline_2.png", "timeline_3.png"}
    assert "tensor parallel loses" in rep.notes["breakdown.png"]
    assert "TP communication" in rep.notes["timeline_1.png"]
    assert "the bubble" in rep.notes["timeline_2.png"]
    page = rep.path.read_text()
    assert page.count("class='why'") == 5


def test_figure_titles_name_model_and_cluster(ways) -> None:
    from sandbox import plots

    plan, d = ways["pipeline parallel"]
    title = f"Where the step time goes: {context_title([plan])}"
    fig = plots.breakdown_bars(["pp"], [d["breakdown_s"]], title)
    assert "llama2-13b" in fig._suptitle.get_text()
    assert "dgx-a100-80g" in fig._suptitle.get_text()


def test_timeline_says_which_ranks_were_simulated(ways) -> None:
    from sandbox.report import timeline_spans
    from sandbox.timeline import simulated_note

    plan, _ = ways["pipeline parallel"]
    spans = timeline_spans(sandbox.simulate(plan))
    assert simulated_note(spans, plan.world_size).startswith("8 of 32 ranks simulated")
    assert simulated_note(spans, 8) == ""


def test_the_python_api_warns_on_an_uncalibrated_cluster(recwarn) -> None:
    from sandbox.calibration import CalibrationWarning

    with pytest.warns(CalibrationWarning, match="cluster 'localhost' has no calibrated"):
        sandbox.simulate({"model": {"preset": "tiny"}}, timeline=False)
    recwarn.clear()
    a100 = {"preset": "dgx-a100-80g", "gpus_per_node": 1}
    sandbox.simulate({"model": {"preset": "tiny"}, "cluster": a100}, timeline=False)
    assert not [w for w in recwarn if issubclass(w.category, CalibrationWarning)]


def test_the_cli_prints_the_warning_once(capsys) -> None:
    from sandbox.cli import main

    assert main(["simulate", str(ROOT / "experiments/plans/gpt-mini.toml")]) == 0
    assert capsys.readouterr().err.count("has no calibrated profile") == 1


def test_one_plan_notes_read_as_one_plan() -> None:
    d = {"step_time_s": 2.0, "breakdown_s": {"compute": 1.5, "bubble": 0.5}}
    assert notes.breakdown_note(["p"], [d]) == (
        "2.00 s per step: p loses 25.0% to the bubble (the pipeline's fill and drain, "
        "stages idle until micro-batches reach them).")
    text = notes.memory_note(["p"], [{"params": 1.0, "activations": 3.0, "total": 4.0}], [True])
    assert text == "p needs 3.7 GiB per GPU, 75.0% of it activations."
