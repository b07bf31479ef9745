"""sandbox.timeline, the one renderer of Gantt figures and Chrome traces (issue 22):
TP spans, chunk ids, bubbles, rank sampling, bounded sizes, the palette."""

import json

import pytest

import sandbox
from sandbox import timeline as tl
from sandbox.plots import plan_title


def _load(**par):
    layers = par.pop("layers", 4)
    gpus = par.get("tp", 1) * par["pp"]
    return sandbox.load({"model": {"preset": "tiny", "layers": layers},
                         "cluster": {"preset": "dgx-a100-80g", "nodes": max(1, gpus // 8),
                                     "gpus_per_node": min(8, gpus)},
                         "parallel": {"dp": 1, **par}})


@pytest.fixture(scope="module")
def interleaved():
    """tp 2, pp 2, two chunks per stage: TP time, chunk ids, bubbles."""
    plan = _load(tp=2, pp=2, vpp=2, schedule="interleaved-1f1b", global_batch=8)
    return sandbox.simulate(plan)


@pytest.fixture(scope="module")
def deep():
    """32 pipeline stages (one tiny layer each): more ranks than a Gantt draws."""
    return sandbox.simulate(_load(pp=32, layers=32, global_batch=16))


def _trace(result, tmp_path):
    path = tmp_path / "t.json"
    result.chrome_trace(str(path))
    return json.loads(path.read_text())


def _threads(trace: dict) -> dict:
    return {(e["pid"], e["tid"]): e["args"]["name"] for e in trace["traceEvents"]
            if e["ph"] == "M" and e["name"] == "thread_name"}


def test_the_trace_holds_tp_events_summing_to_the_breakdown(interleaved, tmp_path):
    trace = _trace(interleaved, tmp_path)
    names = _threads(trace)
    rank = interleaved.critical_rank
    tp = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["name"] == "tp_comm"]
    assert tp and all(names[(e["pid"], e["tid"])] == "tp" for e in tp)
    mine = sum(e["dur"] for e in tp if e["pid"] == rank) / 1e6
    assert interleaved.breakdown_s["tp_comm"] > 0
    assert mine == pytest.approx(interleaved.breakdown_s["tp_comm"], rel=1e-9)


def test_events_on_one_thread_do_not_overlap(interleaved, tmp_path):
    """Chrome trace 'X' events of a thread must nest; ours follow each other."""
    by: dict = {}
    for e in _trace(interleaved, tmp_path)["traceEvents"]:
        if e["ph"] == "X":
            by.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    assert len(by) >= 6  # compute, tp, pp send fwd / bwd on each of 2 ranks
    for evs in by.values():
        evs.sort()
        assert all(b <= c + 1e-6 for (_, b), (c, _) in zip(evs, evs[1:], strict=False))


def test_interleaved_events_carry_their_chunk(interleaved, tmp_path):
    events = [e for e in _trace(interleaved, tmp_path)["traceEvents"] if e["ph"] == "X"]
    for kinds in (("fwd", "bwd"), ("tp_comm",), ("pp_comm",)):
        assert {e["args"]["chunk"] for e in events if e["name"] in kinds} == {0, 1}, kinds
    assert {e["args"]["chunk"] for e in events if e["name"] == "optimizer"} == {-1}
    fwd = [e["args"]["microbatch"] for e in events if e["name"] == "fwd"]
    assert sorted(set(fwd)) == list(range(8))


def test_bubble_spans_sum_to_the_bubble_of_the_breakdown(deep, interleaved):
    for r in (deep, interleaved):
        bubbles = [s for s in r.timeline if s["kind"] == "bubble"]
        assert {s["stream"] for s in bubbles} == {"compute"}
        mine = sum(s["end_s"] - s["start_s"] for s in bubbles if s["rank"] == r.critical_rank)
        assert r.breakdown_s["bubble"] > 0
        assert mine == pytest.approx(r.breakdown_s["bubble"], rel=1e-9)


def test_a_32_stage_gantt_notes_the_ranks_it_shows(deep, tmp_path):
    ranks = sorted({s["rank"] for s in deep.timeline})
    assert len(ranks) == 32
    fig = deep.plot(title="deep")
    (ax,) = fig.axes
    shown = [int(t.get_text().split()[1]) for t in ax.get_yticklabels()]
    assert len(shown) == 16 and shown[0] == ranks[0] and shown[-1] == ranks[-1]
    assert ax.get_title(loc="left").startswith(
        "showing 16 of 32 ranks: " + ", ".join(map(str, shown)))
    trace = _trace(deep, tmp_path)
    assert trace["otherData"]["ranks"] == ranks  # the trace keeps every simulated rank


def test_sample_ranks_spreads_evenly_and_keeps_the_ends():
    got = tl.sample_ranks(range(0, 128 * 8, 8), 16)
    assert len(got) == 16 == len(set(got)) and got == sorted(got)
    assert got[0] == 0 and got[-1] == 127 * 8
    gaps = {b - a for a, b in zip(got, got[1:], strict=False)}
    assert max(gaps) - min(gaps) <= 8
    assert tl.sample_ranks([3, 1, 2], 16) == [1, 2, 3]
    assert tl.sampling_note([1, 2, 3], [1, 2, 3]) == ""


def _spans(n_ranks: int) -> list[dict]:
    """Synthetic step: a forward, a backward and their TP, PP and DP time per rank."""
    out = []
    for r in range(n_ranks):
        out += [{"rank": r, "stream": "compute", "kind": "fwd", "start_s": 0.0, "end_s": 1.0,
                 "microbatch": 0, "chunk": 0},
                {"rank": r, "stream": "tp", "kind": "tp_comm", "start_s": 0.8, "end_s": 1.0},
                {"rank": r, "stream": "compute", "kind": "bubble", "start_s": 1.0, "end_s": 1.5},
                {"rank": r, "stream": "compute", "kind": "bwd", "start_s": 1.5, "end_s": 3.5,
                 "microbatch": 0, "chunk": 0},
                {"rank": r, "stream": "pp_send_fwd", "kind": "pp_comm", "start_s": 1.0,
                 "end_s": 1.2},
                {"rank": r, "stream": "dp_comm", "kind": "dp_comm", "start_s": 3.0, "end_s": 4.0}]
    return out


@pytest.mark.parametrize("n,max_ranks", [(1, 16), (128, 16), (128, 128)])
def test_gantt_height_is_bounded_and_nothing_is_cut(n, max_ranks):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = tl.gantt(_spans(n), "title", "subtitle", max_ranks=max_ranks)
    w, h = fig.get_size_inches() * tl.DPI
    assert 250 <= h <= 1000 and w <= 1400
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    (ax,) = fig.axes
    ranks = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert len(ranks) == min(n, max_ranks, tl.MAX_RANKS)
    tight = fig.get_tightbbox(renderer)  # inches: every label, title and the legend
    assert tight.x0 >= 0 and tight.y0 >= 0
    assert tight.x1 <= w / tl.DPI + 1e-6 and tight.y1 <= h / tl.DPI + 1e-6
    (legend,) = fig.legends
    assert not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))


def test_palette_is_okabe_ito_and_distinct():
    styles = [(s.color, s.hatch) for s in tl.STYLES.values()]
    assert len(set(styles)) == len(styles)
    core = [tl.STYLES[k].color for k in ("fwd", "bwd", "wgrad", "optimizer", "recompute")]
    assert len(set(core)) == len(core) and set(core) <= set(tl.OKABE_ITO.values())
    assert len({s.label for s in tl.STYLES.values()}) == len(tl.STYLES)


def test_measured_categories_share_the_palette(tmp_path):
    from sandbox.timeline_plot import plot_timelines

    assert [tl.category(k) for k in ("forward", "backward", "clip", "pp_comm+bubble",
                                     "tp+dp", "dp_comm")] == \
        ["fwd", "bwd", "optimizer", "pp_comm", "comm", "dp_comm"]
    profile = {"ranks": [{"rank": 0, "intervals_s": {"compute": [[0.0, 0.5]],
                                                     "dp_comm": [[0.4, 0.6]],
                                                     "optimizer": [[0.6, 0.7]]}}]}
    spans = tl.measured_spans(profile)
    assert {tl.track(s) for s in spans} == {"compute", "dp"}

    class Sim:
        timeline = _spans(2)

    png = plot_timelines(Sim(), profile, tmp_path / "t.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_plan_title_names_model_cluster_and_layout():
    plan = sandbox.load({"model": {"preset": "gpt3-175b"},
                         "cluster": {"preset": "dgx-a100-80g", "nodes": 128},
                         "parallel": {"tp": 8, "pp": 16, "vpp": 3, "schedule": "interleaved-1f1b",
                                      "global_batch": 1536}})
    assert plan_title(plan) == \
        "gpt3-175b on 1,024 x A100 80GB (dgx-a100-80g): TP8 PP16 v3 DP8 mb1 Z1 rc-sel"
