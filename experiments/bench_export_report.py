"""The export benchmark's tables: OUT/export.json and OUT/export.md from its rows.

`render` makes the first section (gpt-mini, every mode, issue 5's targets),
`render_vocab` the second (the BPE-8192 gpt-mini, fp32 and int8, issue 20's
targets); `write_tables` writes both files from one dict, `read_tables` reads
export.json back. The rows come from `experiments.bench_export`.
"""

from __future__ import annotations

import json
from pathlib import Path


def read_tables(out: Path) -> dict:
    """OUT/export.json as written last ({} when there is none)."""
    path = out / "export.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def write_tables(out: Path, d: dict) -> None:
    """export.json and export.md (both sections) from one dict."""
    text = render(d["meta"], d["rows"]) + (render_vocab(d["vocab"]) if d.get("vocab") else "")
    (out / "export.json").write_text(json.dumps(d, indent=2))
    (out / "export.md").write_text(text)
    print(text)


def render_vocab(v: dict) -> str:
    """The second section: the BPE-8192 gpt-mini, fp32 and int8."""
    rows, t = v["rows"], v["train"]
    r0 = rows[0]
    s = r0["shape"]
    lines = ["", "## Large vocabulary: gpt-mini with a BPE of 8,192 tokens", "",
             f"- model: gpt-mini with vocab {s['vocab']:,} ({r0['baseline_params']:,} "
             "parameters, tied embeddings: the table is "
             f"{s['vocab'] * s['hidden'] / r0['baseline_params']:.0%} of them), trained by "
             + ", then ".join(f"`{c}`" for c in t["commands"])
             + f" (`python -m experiments.data_path`): {t['run']['device']}, 40 steps, loss "
             f"{t['run']['first_loss']:.3f} -> {t['run']['last_loss']:.3f}",
             f"- rows made by `{r0['command']}` at commit "
             f"{', '.join(sorted({r['git_commit'] for r in rows}))}, "
             f"{v['machine']['cpu']}, {v['machine']['cores']} cores (shared); "
             f"versions {', '.join(f'{k} {x}' for k, x in v['machine']['versions'].items())}",
             f"- quality: {r0['eval_batches']} held-out batches of {r0['eval_batch']} x "
             f"{r0['eval_length']} tokens of the prepared data's held-out split; perplexity "
             "per BPE token; int8 quantizes the embedding gathers and the tied head too "
             "(one int8 table with a scale per row, `runtime/export/int8.py`). The first "
             "section's rows predate that (their vocab-256 embedding stayed fp32)", "",
             "| mode | size (bytes) | size vs fp32 | latency ms | fp32 ms | ppl onnx | "
             "fp32 ppl | top-1 agr. | max abs diff | kv==no-kv | kv==torch |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dc, n = r["decode_check"], r["decode_check"]["batch"]
        lines.append(f"| {r['mode']} | {r['size_bytes']:,} | {r['size_ratio']:.3f} | "
                     f"{r['latency_ms']:.2f} | {r['baseline_latency_ms']:.2f} | "
                     f"{r['ppl_onnx']:.3f} | {r['baseline_ppl_onnx']:.3f} | "
                     f"{r['top1_agreement']:.4f} | {r['max_abs_diff']:.2e} | "
                     f"{dc['prompts_cache_eq_no_cache']}/{n} | "
                     f"{dc['prompts_cache_eq_torch']}/{n} |")
    if v.get("generate"):
        g = v["generate"]
        lines += ["", f"`{g['command']}` (sampled, after 40 training steps; decoded by "
                  "the run's tokenizer, model.tokenizer.json):", "", "```",
                  g["stdout"].rstrip("\n"), "```"]
    lines += ["", "### Issue 20's targets", ""]
    for r in rows:
        for name, x in r["targets"].items():
            lines.append(f"- {r['mode']}: {name}: {x['value']}, "
                         f"**{'met' if x['met'] else 'missed'}**")
    return "\n".join(lines) + "\n"


def _fmt_load(x: list[float]) -> str:
    return "/".join(f"{v:.1f}" for v in x)


def _control_lines(meta: dict, rows: list[dict]) -> list[str]:
    c = meta.get("control")
    if not c:
        return []
    d = meta["distill"]
    train = meta["train"].get("plan")
    share = (f" ({d['steps'] * d['batch'] / (train['steps'] * train['batch']):.0%} of the "
             "sequences the model was trained on)") if train else ""
    out = [f"- the distillation is extra training{share}, so for scale: the {c['what']} "
           f"goes from perplexity {c['ppl_before']:.4f} to {c['ppl_after']:.4f}"]
    for r in rows:
        if r["mode"].startswith("prune25+distill"):
            out.append(f"  - {r['mode']}: perplexity {r['ppl_onnx']:.4f} is "
                       f"{r['ppl_onnx'] / r['baseline_ppl_onnx'] - 1:+.1%} against the "
                       f"unpruned exported model (the target's reference) and "
                       f"{r['ppl_onnx'] / c['ppl_after'] - 1:+.1%} against this equally "
                       "trained unpruned model")
    return out


def render(meta: dict, rows: list[dict]) -> str:
    m = meta["machine"]
    t = meta["train"]
    lines = ["# Export benchmark: gpt-mini, every compression mode", "",
             f"- machine: {m['cpu']}, {m['cores']} cores (shared with other jobs), "
             f"{m['platform']}, Python {m['python']}; rows measured at commit "
             f"{', '.join(sorted({r.get('git_commit', '?') for r in rows}))}, table written "
             f"at {m['git_commit']}",
             f"- versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}",
             f"- model: gpt-mini ({rows[0]['baseline_params']:,} parameters, tied "
             "embeddings) trained by `" + t.get("command", "?") + "`" if rows else "",
             ]
    if "wall_s" in t:
        p = t["plan"]
        lines.append(f"  - {p['steps']} steps x {p['batch']} x {p['seq_len']} bytes, lr "
                     f"{p['lr']}, {p['precision']}, {p['processes']} CPU process: "
                     f"{t['wall_s']:.0f} s wall ({t['step_time_s']:.2f} s/step), loss "
                     f"{t['first_loss']:.3f} -> {t['last_loss']:.3f} (one batch each), "
                     f"held-out loss {t['eval_loss']:.3f} (on sandbox run's own evaluation "
                     "windows); load average (1/5/15 min) before "
                     f"{_fmt_load(t['load_before'])}, after {_fmt_load(t['load_after'])}")
    if rows:
        r0 = rows[0]
        lines += [
            f"- latency: median of the onnxruntime CPU runs of the full graph for batch "
            f"{r0['latency_batch']} x {r0['latency_length']} tokens, "
            f"{r0['latency_threads']} intra-op thread for both the mode and fp32, "
            "ORT_ENABLE_ALL, mode and fp32 runs interleaved (each row measures its own "
            "fp32 baseline in the same call)",
            f"- quality: {r0['eval_batches']} held-out batches of {r0['eval_batch']} x "
            f"{r0['eval_length']} bytes; perplexity per byte (vocab 256); top-1 agreement "
            "and speed-up against the unpruned fp32 model; max |logit diff| against the "
            "PyTorch model the file was exported from (the pruned one for pruned rows)",
            f"- distillation: {meta['distill']['steps']} steps x {meta['distill']['batch']} x "
            f"{meta['distill']['seq_len']} bytes of the training split, from the unpruned "
            "fp32 teacher",
            *_control_lines(meta, rows),
            f"- greedy decoding: {r0['decode_check']['new_tokens']} new tokens after the first "
            f"8 bytes of {r0['decode_check']['batch']} held-out rows, with the KV-cache "
            "graph, without it (full graph each step) and in PyTorch; the columns count "
            "the prompts whose tokens are identical; where the file parts from PyTorch, "
            "'margin' is PyTorch's logit of its own token minus its logit of the file's "
            "token at the first differing position (a near-tie when small)",
            "- rows made by: " + ", ".join(sorted({f"`{r['command']}`" for r in rows}))
            + " (each row's command, date and load average are in export.json); "
            "`--train-only` trained the model",
            "",
            "| mode | heads/kv/ffn | params | size (bytes) | size vs fp32 | latency ms | "
            "fp32 ms | speed-up | ppl onnx | ppl torch | fp32 ppl | top-1 agr. | "
            "max abs diff | kv==no-kv | kv==torch (margin) | load 1/5/15 | targets |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["shape"]
        dc = r["decode_check"]
        n = dc["batch"]
        kv = f"{dc['prompts_cache_eq_no_cache']}/{n} | {dc['prompts_cache_eq_torch']}/{n}"
        if dc["torch_margin_at_divergence"]:
            kv += " (" + ", ".join(f"{x:.3f}" for x in dc["torch_margin_at_divergence"]) + ")"
        met = sum(v["met"] for v in r["targets"].values())
        tg = f"{met} of {len(r['targets'])} met" if r["targets"] else ""
        lines.append(
            f"| {r['mode']} | {s['heads']}/{s['kv_heads']}/{s['ffn_hidden']} | "
            f"{r['params']:,} | {r['size_bytes']:,} | {r['size_ratio']:.3f} | "
            f"{r['latency_ms']:.2f} | {r['baseline_latency_ms']:.2f} | {r['speedup']:.2f}x | "
            f"{r['ppl_onnx']:.4f} | {r['ppl_torch']:.4f} | {r['baseline_ppl_onnx']:.4f} | "
            f"{r['top1_agreement']:.4f} | {r['max_abs_diff']:.2e} | {kv} | "
            f"{_fmt_load(r['load_before'])} | {tg or '-'} |")
    return "\n".join(lines + _target_lines(rows)) + "\n"


def _target_lines(rows: list[dict]) -> list[str]:
    """Issue 5's targets, each met or missed, with the numbers behind it."""
    out = ["", "## Issue 5's targets", ""]
    for r in rows:
        dc = r["decode_check"]
        for name, v in r["targets"].items():
            ok = v["met"]
            line = f"- {r['mode']}: {name}: {v['value']}, **{'met' if ok else 'missed'}**"
            if "PyTorch" in name and not ok:
                m = dc["torch_margin_at_divergence"]
                near = max(m) < r["max_abs_diff"]
                line += (f" ({dc['prompts_cache_eq_torch']} of {dc['batch']} prompts give "
                         "PyTorch's tokens; where they part, PyTorch's own top-1 margin is "
                         f"{', '.join(f'{x:.4f}' for x in m)} logits, "
                         f"{'below' if near else 'not all below'} the file's max |logit "
                         f"difference| of {r['max_abs_diff']:.3f}: "
                         + ("near-ties that the quantization noise flips, not a cache fault"
                            if near else "not only near-ties")
                         + f"; with and without the cache: {dc['prompts_cache_eq_no_cache']} "
                         f"of {dc['batch']} identical)")
            out.append(line)
    return out
