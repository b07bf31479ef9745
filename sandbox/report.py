"""Comparison reports: several plans side by side in one HTML page with PNGs.

`report(plans, out)` simulates each plan and writes to `out/`:
- `report.html`: a table of the plans (pandas), and every figure below,
  embedded (base64), so the one file can be shared;
- `breakdown.png` (step time by component, s), `memory.png` (memory per GPU
  by component against the GPU's capacity and its reserve, GiB), `timeline_<i>.png` (the
  simulated pipeline timeline of each plan), `scaling.png` (GPUs vs tokens/s
  and MFU, each plan re-simulated at several data-parallel sizes with the
  microbatches per replica kept), and, when measurements lie under `out/`
  (run directories with `summary.json` + `plan.toml`, or `compare.json`
  files, see DESIGN.md), `measured.png` (predicted vs measured step time).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sandbox.errors import SandboxError
from sandbox.planfile import load
from sandbox.specs import Plan

SCALING = (0.25, 0.5, 1.0, 2.0, 4.0)  # data-parallel sizes relative to each plan's
TABLE_FIELDS = ("model", "cluster", "gpus", "dp", "tp", "pp", "vpp", "micro_batch",
                "microbatches", "global_batch", "schedule", "zero", "recompute",
                "sequence_parallel", "step_time_s", "tokens_per_s", "tflops_per_gpu", "mfu",
                "hfu", "memory_gb", "fits", "usd_per_million_tokens")


@dataclasses.dataclass
class Report:
    """What `report` wrote: the HTML path, the PNGs, and the comparison table."""

    path: Path
    pngs: list[Path]
    table: Any  # pandas.DataFrame, one column per plan
    measured: Any = None  # pandas.DataFrame of predicted vs measured, or None
    notes: dict[str, str] = dataclasses.field(default_factory=dict)  # PNG name -> its "why"

    def _repr_html_(self) -> str:
        return (f"<p>report written to <code>{html.escape(str(self.path))}</code> "
                f"({len(self.pngs)} figures)</p>" + shown_table(self.table).to_html())


def _simulate(plan: Plan) -> Any:
    from sim import simulate

    return simulate(plan)


def _as_dict(result: Any) -> dict:
    return result.to_dict() if hasattr(result, "to_dict") else dict(result)


def _memory(d: dict) -> dict:
    mem = d.get("memory_gb_per_gpu", {})
    return mem if isinstance(mem, dict) else {"total": float(mem)}


def plan_row(plan: Plan, sim: dict) -> dict:
    """One plan's column of the comparison table (spec fields + contract fields)."""
    p = plan.parallel
    gpu_s = sim["step_time_s"] * plan.world_size
    usd = gpu_s / 3600 * plan.cluster.usd_per_gpu_hour / plan.tokens_per_step * 1e6
    row = {"model": plan.model.name, "cluster": plan.cluster.name, "gpus": plan.world_size,
           **{k: getattr(p, k) for k in ("dp", "tp", "pp", "vpp", "micro_batch",
                                          "microbatches", "global_batch", "schedule", "zero",
                                          "recompute", "sequence_parallel")},
           # context parallelism (its traffic is the "cp_comm (s)" row below)
           **({"cp": p.cp, "cp_method": p.cp_method} if p.cp > 1 else {}),
           **{k: sim.get(k) for k in ("step_time_s", "tokens_per_s", "tflops_per_gpu", "mfu",
                                      "hfu", "fits")},
           "memory_gb": _memory(sim).get("total"), "usd_per_million_tokens": usd}
    row.update({f"{k} (s)": v for k, v in sim.get("breakdown_s", {}).items()})
    return row


def shown_cell(field: str, v: Any, step_s: Any = None) -> Any:
    """A table cell of `field` as shown (`sandbox.units.by_name`); `step_s`: the step
    time a breakdown part belongs to (parts below 1e-12 of it show as 0); NaN: empty."""
    from sandbox import units as u

    if v is None or isinstance(v, float) and v != v:  # no value
        return ""
    return u.by_name(field, v, step_s if isinstance(step_s, int | float) else None)


def shown_table(table: Any) -> Any:
    """`Report.table` (numbers, contract units) as text to show: MFU / HFU in
    percent, memory in GiB, times SI-scaled seconds; rows renamed by unit."""
    shown = table.copy().astype(object)
    for col in table.columns:
        step = table[col].get("step_time_s")
        for field in table.index:
            shown.at[field, col] = shown_cell(str(field), table.at[field, col], step)
    names = {"step_time_s": "step time", "tokens_per_s": "throughput", "mfu": "MFU",
             "hfu": "HFU", "tflops_per_gpu": "FLOP/s per GPU (model)",
             "memory_gb": "memory per GPU", "usd_per_million_tokens": "USD per M tokens"}
    return shown.rename(index=lambda f: names.get(f, f"time: {f[:-4]}" if f.endswith(" (s)")
                                                   else f))


def shown_columns(table: Any, columns: Sequence[str]) -> Any:
    """Columns of a search result table (one plan per row) as shown
    (`shown_cell`: MFU in percent, memory in GiB, times in seconds)."""
    shown = table[list(columns)].copy().astype(object)
    for c in columns:
        shown[c] = [shown_cell(c, v) for v in table[c]]
    return shown.rename(columns={"step_time_s": "step time", "tokens_per_s": "throughput",
                                 "mfu": "MFU", "memory_gb": "memory",
                                 "usd_per_million_tokens": "USD/M tokens",
                                 "breakdown_s.cp_comm": "cp_comm"})


def compare_table(plans: Sequence[Plan], results: Sequence[Any], names: Sequence[str]):
    """pandas.DataFrame: one column per plan, one row per field."""
    import pandas as pd

    cols = {n: plan_row(p, _as_dict(r)) for n, p, r in zip(names, plans, results, strict=True)}
    return pd.DataFrame(cols)


def timeline_spans(result: Any) -> list[dict]:
    """The simulator's per-rank timeline as `{rank, stream, kind, start_s, end_s,
    microbatch, chunk}` dicts (-1: no micro-batch / chunk)."""
    raw = None
    for attr in ("timeline", "spans", "trace"):
        raw = getattr(result, attr, None)
        if raw is not None:
            break
    if callable(raw):
        raw = raw()
    if raw is None:
        return []
    if hasattr(raw, "to_dict") and hasattr(raw, "columns"):  # a DataFrame
        raw = raw.to_dict("records")
    spans = []
    for s in raw:
        s = s if isinstance(s, dict) else dataclasses.asdict(s) if dataclasses.is_dataclass(
            s) else vars(s)
        start = s.get("start_s", s.get("start"))
        end = s.get("end_s", s.get("end"))
        if end is None and "duration_s" in s:
            end = start + s["duration_s"]
        spans.append({"rank": s.get("rank", 0), "stream": s.get("stream", "compute"),
                      "kind": s.get("kind", s.get("name", "work")), "start_s": float(start),
                      "end_s": float(end), "microbatch": int(s.get("microbatch", -1)),
                      "chunk": int(s.get("chunk", -1))})
    return spans


def scaled(plan: Plan, factor: float) -> Plan | None:
    """The plan with dp (and nodes, and the global batch) scaled; None if it cannot be."""
    p, c = plan.parallel, plan.cluster
    dp = int(round(p.dp * factor))
    if dp < 1 or abs(dp - p.dp * factor) > 1e-9:
        return None
    world = dp * p.tp * p.pp * p.cp
    if world % c.gpus_per_node:
        return None
    try:
        return plan.replace(dp=dp, nodes=world // c.gpus_per_node,
                            global_batch=p.global_batch // p.dp * dp)
    except SandboxError:
        return None


def scaling_curve(plan: Plan, factors: Sequence[float] = SCALING,
                  simulate: Callable = _simulate):
    """pandas.DataFrame(gpus, dp, global_batch, tokens_per_s, mfu, step_time_s)."""
    import pandas as pd

    rows = []
    for f in factors:
        q = scaled(plan, f)
        if q is None:
            continue
        d = _as_dict(simulate(q))
        rows.append({"gpus": q.world_size, "dp": q.parallel.dp,
                     "global_batch": q.parallel.global_batch, "tokens_per_s": d["tokens_per_s"],
                     "mfu": d["mfu"], "step_time_s": d["step_time_s"]})
    return pd.DataFrame(rows, columns=["gpus", "dp", "global_batch", "tokens_per_s", "mfu",
                                       "step_time_s"])


def find_measurements(folder: Path, simulate: Callable = _simulate):
    """Predicted vs measured step times found under `folder` -> DataFrame or None.

    A run directory (`summary.json` beside `plan.toml`) is simulated here; a
    `compare.json` carries its own prediction.
    """
    import pandas as pd

    rows = []
    for path in sorted(folder.rglob("compare.json")):
        try:
            d = json.loads(path.read_text())
            rows.append({"label": path.parent.name or str(path), "source": str(path),
                         "predicted": float(d["predicted"]["step_time_s"]),
                         "measured": float(d["measured"]["step_time_s"])})
        except (OSError, ValueError, KeyError, TypeError):
            continue
    for path in sorted(folder.rglob("summary.json")):
        plan_file = path.parent / "plan.toml"
        if not plan_file.exists() or (path.parent / "compare.json").exists():
            continue
        try:
            measured = float(json.loads(path.read_text())["step_time_s"])
            predicted = float(_as_dict(simulate(load(plan_file)))["step_time_s"])
        except (OSError, ValueError, KeyError, TypeError, SandboxError):
            continue
        rows.append({"label": path.parent.name, "source": str(path), "predicted": predicted,
                     "measured": measured})
    if not rows:
        return None
    df = pd.DataFrame(rows)
    df["error"] = (df["predicted"] - df["measured"]) / df["measured"]
    return df


def _names(sources: Sequence[Any], plans: Sequence[Plan], names: Sequence[str] | None
           ) -> list[str]:
    from sandbox.plots import plan_label

    if names:
        if len(names) != len(plans):
            raise SandboxError(f"names: {len(names)} given for {len(plans)} plans")
        return list(names)
    out = []
    for src, plan in zip(sources, plans, strict=True):
        is_file = isinstance(src, (str, Path)) and "\n" not in str(src) and Path(src).exists()
        out.append(Path(src).stem if is_file else plan_label(plan))
    seen: dict[str, int] = {}
    for i, n in enumerate(out):  # make names unique
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1:
            out[i] = f"{n} ({seen[n]})"
    return out


def _img(path: Path, alt: str, note: str = "") -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    why = f"<p class='why'>{html.escape(note)}</p>" if note else ""
    return (f"<figure><img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'/>"
            f"<figcaption>{html.escape(alt)} ({html.escape(path.name)})</figcaption>{why}"
            "</figure>")


def context_title(plans: Sequence[Plan]) -> str:
    """What the plans of a report share: `llama2-13b on 32 x A100 80GB (dgx-a100-80g)`,
    or the models and clusters listed when they differ."""
    from sandbox.plots import plan_title

    heads = {plan_title(p).split(": ")[0] for p in plans}
    if len(heads) == 1:
        return heads.pop()
    models = sorted({p.model.name for p in plans})
    clusters = sorted({f"{p.world_size:,} GPUs of {p.cluster.name}" for p in plans})
    return f"{', '.join(models)} on {'; '.join(clusters)}"


def report(plans: Sequence[Any], out: str | Path, names: Sequence[str] | None = None,
           scaling: Sequence[float] = SCALING, simulate: Callable = _simulate,
           results: Sequence[Any] | None = None, overrides: Sequence[str] = ()) -> Report:
    """Simulate `plans` (paths, dicts or Plans) and write `out/report.html` + PNGs.

    `results` may pass simulations already made (same order as `plans`);
    `scaling` lists the data-parallel sizes, relative to each plan's, of the
    scaling curves (empty: no scaling plot); `overrides`: `--set` items applied
    to every plan (`sandbox.overrides`). A plan on a cluster without a
    calibrated profile gets `calibration_warning` above the table.
    """
    from sandbox import plots
    from sandbox import report_notes as notes
    from sandbox.calibration import calibration_warnings
    from sandbox.outputs import output_dir, save_figure, writing
    from sandbox.timeline import simulated_note

    if not plans:
        raise SandboxError("report: give at least one plan")
    out = output_dir(out, "out")
    loaded = [load(p, overrides) for p in plans]
    labels = _names(plans, loaded, names)
    with writing(out, "out"):
        out.mkdir(exist_ok=True)
    results = list(results) if results is not None else [simulate(p) for p in loaded]
    dicts = [_as_dict(r) for r in results]
    table = compare_table(loaded, results, labels)
    biggest = max(loaded, key=lambda p: p.cluster.gpu.hbm_gb).cluster  # the capacity line's GPU
    where = context_title(loaded)
    mems = [_memory(d) for d in dicts]
    figures: list[tuple[str, str, Any, str]] = [
        ("breakdown.png", "Step time by component",
         plots.breakdown_bars(labels, [d.get("breakdown_s", {}) for d in dicts],
                              f"Where the step time goes: {where}"),
         notes.breakdown_note(labels, dicts)),
        ("memory.png", "Memory per GPU by component",
         plots.memory_bars(labels, mems, biggest.gpu.hbm_gb, f"Memory per GPU: {where}",
                           reserve=biggest.memory_reserve),
         notes.memory_note(labels, mems, [bool(d.get("fits", True)) for d in dicts])),
    ]
    for i, (label, p, r, d) in enumerate(zip(labels, loaded, results, dicts, strict=True)):
        spans = timeline_spans(r)
        if spans:
            name = label.replace(plots.plan_label(p), "").strip(" :")  # the layout is in the title
            name = "" if name == p.model.name else name  # and so is the model
            head = f"{name}: {plots.plan_title(p)}" if name else plots.plan_title(p)
            figures.append((f"timeline_{i + 1}.png", f"Pipeline timeline: {label}",
                            plots.timeline(spans, head, subtitle=simulated_note(
                                spans, p.world_size)), notes.timeline_note(d)))
    if scaling:
        curves = {label: scaling_curve(p, scaling, simulate)
                  for label, p in zip(labels, loaded, strict=True)}
        if any(len(c) for c in curves.values()):
            figures.append(("scaling.png", "Scaling with data parallelism",
                            plots.scaling_curves(curves, "Scaling with data parallelism: "
                                                 + where.split(" on ")[0] + " on "
                                                 + ", ".join(sorted({p.cluster.name
                                                                     for p in loaded}))),
                            notes.scaling_note(curves)))
    measured = find_measurements(out, simulate)
    if measured is not None:
        figures.append(("measured.png", "Predicted vs measured step time",
                        plots.predicted_vs_measured(list(measured["label"]),
                                                    list(measured["predicted"]),
                                                    list(measured["measured"])), ""))
    pngs = []
    for fname, _, fig, _ in figures:
        save_figure(fig, out / fname, "out")
        pngs.append(out / fname)
    path = out / "report.html"
    with writing(path, "out"):
        path.write_text(_html(table, figures, out, measured,
                              calibration_warnings(p.cluster for p in loaded)))
    return Report(path=path, pngs=pngs, table=table, measured=measured,
                  notes={fname: note for fname, _, _, note in figures if note})


def _html(table: Any, figures: list, out: Path, measured: Any,
          notes: Sequence[str] = ()) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Plan comparison</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1300px}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
             "padding:3px 8px;text-align:right}img{max-width:100%}figure{margin:1.5em 0}"
             "</style></head><body>",
             "<h1>Plan comparison</h1>",
             "<p>Predictions of the discrete-event simulator (<code>sim/</code>); "
             "memory per GPU in GiB (2<sup>30</sup> bytes), MFU and HFU in percent.</p>",
             *(f"<p class='warning' style='color:#a40;font-weight:bold'>{html.escape(n)}</p>"
               for n in notes),
             "<h2>Plans side by side</h2>",
             shown_table(table).to_html(na_rep="")]
    if measured is not None:
        parts += ["<h2>Predicted vs measured</h2>",
                  measured.to_html(index=False, float_format=lambda v: f"{v:.4g}")]
    parts.append("<h2>Figures</h2>")
    parts += [_img(out / fname, alt, note) for fname, alt, _, note in figures]
    parts.append("</body></html>")
    return "\n".join(parts)
