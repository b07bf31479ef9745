"""Small HTML renderings for Jupyter (`_repr_html_`)."""

from __future__ import annotations

import html
from typing import Any


def table_html(rows: list[tuple[str, Any]], title: str = "") -> str:
    head = f"<caption>{html.escape(title)}</caption>" if title else ""
    body = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
                   f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>"
                   for k, v in rows)
    return f"<table>{head}{body}</table>"


def plan_html(plan: Any) -> str:
    d = plan.to_dict()
    parts = []
    for section in ("model", "cluster", "parallel", "train"):
        rows = [(k, v) for k, v in d[section].items() if not isinstance(v, dict)]
        if section == "cluster":
            rows += [(f"gpu.{k}", v) for k, v in d["cluster"]["gpu"].items()]
        parts.append(table_html(rows, section))
    return "<div style='display:flex;gap:2em;align-items:flex-start'>" + "".join(parts) + "</div>"


def facts_html(rows: list[tuple[str, Any]]) -> str:
    """`sandbox.info`'s facts as shown (`sandbox.info.facts_rows`: SI counts, GiB)."""
    return table_html(rows, "plan facts")
