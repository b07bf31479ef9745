"""The budget of `sandbox simulate --failures` (steps, --tokens, --days) and its
summary table: a whole Llama-3-405B run has hundreds of interruptions, the
p10-p90 band comes from the runs, the text output holds no raw lists."""

from __future__ import annotations

import argparse
import json
import math
import re

import pytest

import sandbox
from experiments.failures_llama3 import PAPER, PAPER_DAYS, RESULTS, table4_plan
from sandbox.cli import main as cli_main
from sandbox.commands._args import count
from sandbox.errors import SandboxError
from sandbox.failures_view import failures_html, format_failures, plot_interval_sweep
from sim.failures import failure_report

PAPER_INTERRUPTIONS = sum(PAPER.values())  # Llama 3, Table 5: 419 in 54 days
RAW_LIST = re.compile(r"\[\s*-?[0-9.]+(e[-+]?[0-9]+)?\s*,")  # "[1.5, 2.5, ..." of a sweep

PLAN = ('[model]\npreset = "gpt3-1.3b"\n[cluster]\npreset = "dgx-a100-80g"\nnodes = 64\n'
        '[parallel]\ntp = 8\nglobal_batch = 512\n[train]\nsteps = 100\n')


@pytest.fixture(scope="module")
def llama3_15t():
    """The Llama-3-405B plan of experiments/failures_llama3.py at the step time its
    result records, priced with a 15T-token budget (50 runs: 0.2 s)."""
    recorded = json.loads((RESULTS / "failures_llama3.json").read_text())
    plan, step_s = table4_plan(recorded["plan"]["vpp"]), recorded["step_time_s"]
    return plan, failure_report(plan, step_s, tokens=15e12, runs=50)


def test_llama3_405b_with_15t_tokens_has_hundreds_of_interruptions(llama3_15t):
    plan, r = llama3_15t
    assert r.budget_source == "tokens"
    assert r.budget_steps == math.ceil(15e12 / plan.tokens_per_step)
    assert 15e12 <= r.budget_tokens < 15e12 + plan.tokens_per_step
    assert 100 <= r.expected_interruptions <= 999, r.expected_interruptions
    # the mechanism: Llama 3's rate (419 in 54 days) over this run's wall time
    paper = PAPER_INTERRUPTIONS * r.expected_time_to_train_h / 24 / PAPER_DAYS
    assert 1 / 1.5 < r.expected_interruptions / paper < 1.5, (r.expected_interruptions, paper)
    # the band over the runs has a width
    assert r.interruptions_p10 < r.expected_interruptions < r.interruptions_p90
    assert r.time_to_train_p10_h < r.time_to_train_p90_h
    assert r.cost_p10_usd < r.cost_p90_usd
    text = format_failures(r.to_dict())
    assert "50 simulated runs" in text and "15T tokens" in text and "given in tokens" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("interruptions"))
    m = re.search(r"interruptions +([0-9,.]+)  \(p10 ([0-9,.]+), p90 ([0-9,.]+)\)", row)
    mean, p10, p90 = (float(x.replace(",", "")) for x in m.groups())
    assert (mean, p10, p90) == pytest.approx(
        (r.expected_interruptions, r.interruptions_p10, r.interruptions_p90), rel=1e-3)
    assert "gpu 59%" in row  # the top cause and its share
    html = failures_html(r)
    assert "time to train (days)" in html and "p10" in html and "50 simulated runs" in html


def test_the_plot_states_the_runs_and_the_band(llama3_15t):
    _, r = llama3_15t
    ax = plot_interval_sweep(r).axes[0]
    summary = ax.get_title(loc="left")
    assert "of 50 runs" in summary and "interruptions" in summary and "cost" in summary
    assert ax.get_ylabel() == "time to train (days)"  # a 100-day run, not 2,600 h
    assert "p10-p90 of 50 runs" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_budgets_in_steps_time_and_default_agree():
    plan = sandbox.load({"model": {"preset": "gpt3-1.3b"},
                         "cluster": {"preset": "dgx-a100-80g", "nodes": 64,
                                     "gpu_mtbf_h": 2000.0},
                         "parallel": {"tp": 8, "global_batch": 512},
                         "train": {"steps": 3000}})
    step = 2.0
    default = failure_report(plan, step, runs=20).to_dict()
    by_steps = failure_report(plan, step, runs=20, steps=3000).to_dict()
    by_time = failure_report(plan, step, runs=20, work_s=3000 * step).to_dict()
    assert default["budget_source"] == "plan's train.steps"
    assert (by_steps["budget_source"], by_time["budget_source"]) == ("steps",
                                                                     "failure-free time")
    for d in (by_steps, by_time):
        same = {k: v for k, v in d.items() if k != "budget_source"}
        assert same == {k: v for k, v in default.items() if k != "budget_source"}
    longer = failure_report(plan, step, runs=20, steps=30000)
    assert longer.expected_interruptions > 5 * default["expected_interruptions"]
    assert longer.failure_free_time_h == pytest.approx(30000 * step / 3600)


def test_bad_budgets_are_refused_in_one_line(llama3_15t):
    plan, _ = llama3_15t
    for kw, needle in (({"tokens": 1e12, "steps": 10}, "one budget"),
                       ({"tokens": 0.0}, "tokens must be"), ({"work_s": math.inf}, "work_s"),
                       ({"steps": math.nan}, "steps must be"),
                       ({"tokens": 1e18}, r"failures per simulated run .* limit of 20,000")):
        with pytest.raises(SandboxError, match=needle):
            failure_report(plan, 9.8, **kw)


@pytest.mark.parametrize("text,value", [("15T", 15e12), ("2.5e12", 2.5e12), ("300B", 3e11),
                                        ("1M", 1e6), ("2.5t", 2.5e12), ("7k", 7e3),
                                        ("1000", 1e3)])
def test_token_counts_parse(text, value):
    assert count(text) == value


@pytest.mark.parametrize("text", ["15X", "", "T", "abc", "0", "-1T", "nanT", "1e400", "infB"])
def test_bad_token_counts_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        count(text)


def test_cli_tokens_print_a_failures_table_without_raw_lists(cli, tmp_path):
    f = tmp_path / "p.toml"
    f.write_text(PLAN)
    r = cli("simulate", str(f), "--tokens", "300B")  # implies --failures
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.count("failures: 100 simulated runs") == 1
    assert "286,103 steps = 300B tokens" in out and "(given in tokens)" in out
    for label in ("job MTBF (h)", "checkpoint interval", "interruptions", "goodput",
                  "time to train (days)", "cost (USD)"):
        assert re.search(rf"^  {re.escape(label)} +\S", out, re.M), label
    assert not RAW_LIST.search(out), out
    assert "{" not in out and "sweep" not in out and "interruption_share" not in out


def test_cli_default_budget_names_train_steps_and_json_keeps_the_sweep(tmp_path, capsys):
    f = tmp_path / "p.toml"
    f.write_text(PLAN)
    assert cli_main(["simulate", str(f), "--failures"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  budget +100 steps = 104\.9M tokens = ", out, re.M), out
    assert "(plan's train.steps; pass --tokens or --days for a whole run)" in out
    assert not RAW_LIST.search(out)
    assert cli_main(["simulate", str(f), "--days", "2", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["budget_source"] == "failure-free time" and d["failure_free_time_h"] == 48.0
    assert len(d["sweep"]["interval_s"]) > 8 and d["interruptions_p10"] <= d["interruptions_p90"]


@pytest.mark.parametrize("args,needles", [
    (["--tokens", "15X"], ["--tokens", "15X"]),
    (["--tokens=-1T"], ["--tokens", "> 0"]),
    (["--tokens", "1T", "--days", "3"], ["--days", "not allowed"]),
    (["--days", "1e308"], ["--days"]),
    (["--tokens", "1e18"], ["failures per simulated run", "smaller budget"]),
])
def test_cli_bad_budgets_are_one_line(tmp_path, capsys, args, needles):
    f = tmp_path / "p.toml"
    f.write_text(PLAN)
    assert cli_main(["simulate", str(f), *args]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and all(n in err for n in needles), err
