"""The notebooks in experiments/notebooks run clean on CPU and show plots
(03 also generates text with the exported int8 model)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "experiments" / "notebooks"
CELL_TIMEOUT_S = 300


def execute(name: str):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        f"{name} is committed with outputs"
    NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def outputs(nb, mime: str) -> int:
    return sum(1 for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", []) if mime in o.get("data", {}))


def test_01_explore_strategies():
    nb = execute("01_explore_strategies.ipynb")
    assert outputs(nb, "image/png") >= 4  # scatter, breakdown, memory, timeline
    assert outputs(nb, "text/html") >= 4  # search tables, comparison, slowdown


def test_02_run_and_compare():
    nb = execute("02_run_and_compare.ipynb")
    assert outputs(nb, "image/png") >= 2  # loss curve, predicted vs measured


def test_03_export():
    nb = execute("03_export.ipynb")
    assert outputs(nb, "image/png") >= 1  # size / latency / perplexity bars
    assert outputs(nb, "text/html") >= 2  # the int8 report and the comparison table
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")
    # both continuations start from the prompt (repr quotes with ' or ")
    assert re.search(r"greedy : ['\"]def ", text) and re.search(r"sampled: ['\"]def ", text)


def test_04_codesign():
    nb = execute("04_codesign.ipynb")
    assert outputs(nb, "image/png") >= 2  # cost / time Pareto, step time by bandwidth
    assert outputs(nb, "text/html") >= 2  # designs, best plan per design
