"""Export to ONNX: correctness against PyTorch, the KV-cache decoder, quantized
files, structured pruning, and the CLI's behaviour on bad input.

Runs on the `tiny`, `tiny-llama` (GQA + RoPE + SwiGLU) and `tiny-mla`
(DeepSeek's multi-head latent attention, its decoder caching the latent) presets, trained
for a few seconds in-process and saved as run directories. The size, speed
and quality targets at a realistic scale are in experiments/bench_export.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from helpers.export_fixtures import train_run

import runtime.export.pipeline as pipeline
from runtime.export.graphs import empty_past
from runtime.export.onnx_files import decoder_path, session
from runtime.export.pipeline import Exporter, export
from runtime.export.source import heldout_batches, load_run, train_batches
from sandbox.errors import SandboxError

FAST = {"eval_batches": 2, "latency_repeats": 3, "decode_tokens": 12}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for preset in ("tiny", "tiny-llama", "tiny-mla"):
        train_run(root / preset, preset, steps=60, batch=8, lr=2e-3)
        out[preset] = root / preset
    return out


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    """Lazily exported files, cached per (preset, mode); tiny int8 goes
    through the CLI (`sandbox export`) with its default settings. The other
    modes go through one `Exporter` per preset, which traces the preset's
    fp32 graphs once."""
    root = tmp_path_factory.mktemp("onnx")
    cache: dict[tuple, tuple[Path, dict]] = {}
    exporters: dict[str, Exporter] = {}

    def get(preset: str, quantize: str, prune: float = 0.0, distill: int = 0):
        key = (preset, quantize, prune, distill)
        if key not in cache:
            path = root / "-".join(map(str, key)) / "model.onnx"
            if key == ("tiny", "int8", 0.0, 0):
                r = run_cli("export", str(runs[preset]), "--out", str(path))
                assert r.returncode == 0, r.stderr
                assert "wrote" in r.stdout and "latency" in r.stdout
                rep = json.loads(path.with_suffix(".report.json").read_text())
            else:
                if preset not in exporters:
                    exporters[preset] = Exporter(runs[preset])
                rep = exporters[preset].export(path, quantize=quantize, prune=prune,
                                               distill_steps=distill, **FAST).to_dict()
            cache[key] = (path, rep)
        return cache[key]

    yield get
    for exporter in exporters.values():
        exporter.close()


def _check_shapes(path: Path, model, tol: float | None) -> None:
    """onnxruntime runs batch 1 and 3, lengths 5 and 17; fp32 matches torch."""
    sess = session(path)
    for b in (1, 3):
        for s in (5, 17):
            ids = torch.randint(0, 256, (b, s))
            out = sess.run(["logits"], {"input_ids": ids.numpy()})[0]
            assert out.shape == (b, s, 256)
            if tol is not None:
                with torch.no_grad():
                    ref = model(ids).numpy()
                assert np.abs(out - ref).max() <= tol


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama", "tiny-mla"])
def test_fp32_export_matches_torch(preset, runs, exported):
    path, rep = exported(preset, "none")
    assert rep["max_abs_diff"] <= 1e-4 and rep["top1_agreement"] == 1.0
    assert rep["size_bytes"] == rep["baseline_size_bytes"] == path.stat().st_size
    assert abs(rep["ppl_onnx"] / rep["ppl_torch"] - 1) < 1e-4
    assert rep["opset"] >= 17 and rep["graphs"]["model"]["inputs"]["input_ids"] == [
        "batch", "seq"]
    assert json.loads(path.with_suffix(".report.json").read_text())["size_bytes"] == \
        rep["size_bytes"]
    assert decoder_path(path).is_file() and path.with_suffix(".report.json").is_file()
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]
    model = load_run(runs[preset]).model
    _check_shapes(path, model, tol=1e-4)
    dc = rep["decode_check"]
    assert dc["cache_matches_no_cache"] and dc["cache_matches_torch"], dc


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama", "tiny-mla"])
def test_decoder_graph_logits_match_torch_step_by_step(preset, runs, exported):
    """Prefill with an empty past, then 1- and 3-token steps: RoPE and learned
    position offsets and the causal mask over the cache must be right."""
    path, _ = exported(preset, "none")
    model = load_run(runs[preset]).model
    dec = session(decoder_path(path))
    names = [o.name for o in dec.get_outputs()]
    ids = heldout_batches(3, 20, 1)[0]
    with torch.no_grad():
        ref = model(ids).numpy()
    feeds = {"input_ids": ids[:, :6].numpy()}
    feeds.update({i.name: p.numpy() for i, p in zip(dec.get_inputs()[1:], empty_past(model, 3),
                                                    strict=True)})
    start = 0
    for stop in (6, 7, 10, 11, 20):
        feeds["input_ids"] = ids[:, start:stop].numpy()
        res = dec.run(names, feeds)
        assert np.abs(res[0] - ref[:, start:stop]).max() <= 1e-4, (start, stop)
        assert res[1].shape[2] == stop
        feeds = {n.replace("present", "past"): r for n, r in zip(names[1:], res[1:], strict=True)}
        start = stop


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama", "tiny-mla"])
def test_int8_quality_and_cached_decoding(preset, runs, exported):
    path, rep = exported(preset, "int8")
    assert rep["size_ratio"] < 0.6  # tiny's embeddings are a large share; gpt-mini: bench
    assert rep["top1_agreement"] >= 0.95
    assert rep["ppl_onnx"] <= 1.03 * rep["baseline_ppl_onnx"]
    dc = rep["decode_check"]
    assert dc["cache_matches_no_cache"] and dc["cache_matches_torch"], dc
    _check_shapes(path, None, tol=None)


@pytest.mark.parametrize("mode", ["int8-static", "int4"])
def test_other_quantizers_run(mode, exported):
    path, rep = exported("tiny", mode)
    assert rep["size_bytes"] < rep["baseline_size_bytes"]
    assert rep["top1_agreement"] >= 0.9 and rep["ppl_onnx"] <= 1.1 * rep["baseline_ppl_onnx"]
    assert rep["decode_check"]["cache_matches_no_cache"], rep["decode_check"]
    _check_shapes(path, None, tol=None)


def test_structured_pruning_really_shrinks(runs):
    from runtime.export.prune import n_params, prune

    for preset, heads, kv, ffn in (("tiny", 3, 3, 192), ("tiny-llama", 2, 2, 144)):
        model = load_run(runs[preset]).model
        cal = [next(train_batches(2, 64, 0))[:, :-1] for _ in range(2)]
        student, res = prune(model, 0.25, cal)
        att = student.layers["0"].attention
        assert att.wq.out_features == heads * att.head_dim and att.wo.in_features == heads * 16
        assert att.wk.out_features == kv * att.head_dim == att.wv.out_features
        ff = student.layers["0"].feed_forward
        assert (ff.w1 if ff.gated else ff.fc1).out_features == ffn
        assert (res.heads_after, res.kv_heads_after, res.ffn_after) == (heads, kv, ffn)
        assert n_params(student) == res.params_after < 0.8 * res.params_before
        assert n_params(model) == res.params_before  # the teacher is untouched
        ids = torch.randint(0, 256, (2, 9))
        assert student(ids).shape == (2, 9, 256)


def test_pruned_distilled_export(runs, exported):
    path, rep = exported("tiny", "none", 0.25, 20)
    assert rep["shape"]["heads"] == 3 and rep["shape"]["ffn_hidden"] == 192
    assert rep["baseline_shape"]["heads"] == 4
    assert rep["size_ratio"] <= 0.8 and rep["max_abs_diff"] <= 1e-4
    assert rep["distill_log"]["steps"] == 20
    assert rep["decode_check"]["cache_matches_torch"]
    _check_shapes(path, None, tol=None)


@pytest.mark.parametrize("stage", ["export_full", "quantize"])
def test_no_partial_file_on_failure(stage, runs, tmp_path, monkeypatch):
    """A failure while tracing or while quantizing leaves nothing next to OUT."""

    def broken(model_or_src, path, *args):
        Path(path).write_bytes(b"partial")
        raise RuntimeError("boom")

    monkeypatch.setattr(pipeline, stage, broken)
    out = tmp_path / "m" / "model.onnx"
    with pytest.raises((SandboxError, RuntimeError), match="boom"):
        export(runs["tiny"], out, quantize="none")
    assert list(out.parent.iterdir()) == []


def _one_line_error(r, *words):
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_cli_bad_input(cli, runs, tmp_path):
    out = tmp_path / "o" / "model.onnx"
    _one_line_error(cli("export", str(tmp_path / "nope"), "--out", str(out)), "no such")
    _one_line_error(cli("export", str(runs["tiny"]), "--out", str(out), "--quantize", "int3"),
                    "int3")
    bad = tmp_path / "bad"
    ck = bad / "checkpoints" / "step_00000001"
    ck.mkdir(parents=True)
    (bad / "plan.toml").write_text((runs["tiny"] / "plan.toml").read_text())
    (ck / "COMPLETE").write_text("1\n")
    (ck / ".metadata").write_bytes(b"not a checkpoint")
    _one_line_error(cli("export", str(bad), "--out", str(out)), "corrupt checkpoint")
    (tmp_path / "empty").mkdir()
    _one_line_error(cli("export", str(tmp_path / "empty"), "--out", str(out)), "plan.toml")
    assert not out.exists() and not list(tmp_path.glob("o/*"))
    _one_line_error(cli("generate", str(out), "--prompt", "x"), "no such")


def test_mla_export_refuses_pruning_and_reports_its_shape(runs, exported, tmp_path):
    out = tmp_path / "model.onnx"
    with pytest.raises(SandboxError, match="--prune: 0.25: .*multi-head latent attention"):
        export(runs["tiny-mla"], out, prune=0.25)
    assert not out.exists() and not list(tmp_path.iterdir())
    path, rep = exported("tiny-mla", "none")
    assert rep["shape"]["attention"] == "mla" and rep["shape"]["kv_lora_rank"] == 32
    cache = rep["graphs"]["decoder"]["inputs"]
    assert cache["past_key_0"] == ["batch", 1, "past", "kv_lora_rank"]
    assert cache["past_value_0"] == ["batch", 1, "past", "qk_rope_head_dim"]
    assert {i.name: i.shape[3] for i in session(decoder_path(path)).get_inputs()[1:3]} == {
        "past_key_0": 32, "past_value_0": 8}


def test_cli_export_report_and_generate(cli, exported):
    out, rep = exported("tiny", "int8")  # written by `sandbox export`
    for key in ("size_bytes", "baseline_size_bytes", "max_abs_diff", "top1_agreement",
                "ppl_torch", "ppl_onnx", "latency_ms", "baseline_latency_ms", "opset",
                "latency_batch", "latency_length", "shape"):
        assert key in rep, key
    g = cli("generate", str(out), "--prompt", "def ", "--max-new-tokens", "10")
    assert g.returncode == 0 and g.stdout.startswith("def "), g.stderr
    s1 = cli("generate", str(out), "--prompt", "def ", "--max-new-tokens", "10",
             "--temperature", "1.0", "--seed", "7")
    s2 = cli("generate", str(out), "--prompt", "def ", "--max-new-tokens", "10",
             "--temperature", "1.0", "--seed", "7")
    assert s1.returncode == 0 and s1.stdout == s2.stdout
    context = rep["shape"]["seq_len"]
    for args, words in ((("--prompt", "ab", "--temperature", "nan"), ("--temperature", "nan")),
                        (("--prompt", "ab", "--max-new-tokens", "1000000000"), ("0..65,536",)),
                        (("--prompt", "ab", "--max-new-tokens", str(context)),
                         ("context", str(context))),
                        (("--prompt", ""), ("--prompt", "empty"))):
        _one_line_error(cli("generate", str(out), *args), *words)


def test_export_of_a_tensor_parallel_sandbox_run(cli, tmp_path):
    """A run trained by `sandbox run` with tp=2 (sharded DCP checkpoint) loads
    into one model and exports exactly."""
    plan = tmp_path / "plan.toml"
    plan.write_text('[model]\npreset = "tiny"\n[cluster]\npreset = "localhost"\n'
                    '[parallel]\ndp = 1\ntp = 2\nglobal_batch = 4\n'
                    '[train]\nsteps = 2\ncheckpoint_every = 2\n')
    r = cli("run", str(plan), "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    loaded = load_run(tmp_path / "run")
    from runtime.model import build_model

    init = build_model(loaded.plan.model, seed=loaded.plan.train.seed)
    assert not torch.equal(init.layers["0"].attention.wq.weight,
                           loaded.model.layers["0"].attention.wq.weight)  # trained weights
    rep = export(tmp_path / "run", tmp_path / "model.onnx", quantize="none", **FAST)
    assert rep.max_abs_diff <= 1e-4 and rep.decode_check["cache_matches_torch"]


def test_exporter_makes_each_student_and_teacher_graph_once(runs, tmp_path, monkeypatch):
    """Exporting one run several ways (benchmarks, notebook 03) prunes and
    distils each setting once and traces the teacher's fp32 graphs once;
    `close()` removes them."""
    calls = {"prune": 0, "teacher_full": 0}
    real_prune, real_full = pipeline.prune_model, pipeline.export_full

    def counting_prune(*args, **kwargs):
        calls["prune"] += 1
        return real_prune(*args, **kwargs)

    with Exporter(runs["tiny"]) as ex:
        def counting_full(model, path):
            calls["teacher_full"] += model is ex.run.model
            return real_full(model, path)

        monkeypatch.setattr(pipeline, "prune_model", counting_prune)
        monkeypatch.setattr(pipeline, "export_full", counting_full)
        a = ex.student(0.25, 2, distill_batch=2)
        b = ex.student(0.25, 2, distill_batch=2)
        assert a is b and calls["prune"] == 1
        assert a.model.layers["0"].attention.wq.out_features == 3 * 16
        assert a.distill_log is not None and a.distill_log.steps == 2
        assert ex.student(0.0, 0).model is ex.run.model  # no pruning: the trained model
        assert ex.student(0.25, 3, distill_batch=2) is not a and calls["prune"] == 2
        path, _ = ex.teacher_graph("full")
        assert ex.teacher_graph("full")[0] == path and calls["teacher_full"] == 1
        rep = ex.export(tmp_path / "m" / "model.onnx", quantize="none", prune=0.25,
                        distill_steps=2, distill_batch=2, **FAST)
        assert calls == {"prune": 2, "teacher_full": 1}
        assert rep.prune_result == a.prune_result.to_dict()
        assert rep.distill_log == a.distill_log.to_dict() and rep.max_abs_diff <= 1e-4
        kept = path.parent
        assert kept.is_dir()
    assert not kept.exists()


def test_cli_quantize_modes_are_the_quantizer_modes():
    """`sandbox export` checks --quantize before importing torch, with its own list."""
    from runtime.export.quantize import MODES
    from sandbox.commands.export import QUANTIZE_MODES

    assert QUANTIZE_MODES == MODES


def test_int8_token_logits_do_not_depend_on_later_tokens(exported, tmp_path):
    """Per-token activation scales: a prefix's int8 logits are the same whether
    or not later tokens are in the call (what makes the KV-cache decoder,
    which sees one token per step, agree with the full graph). onnxruntime's
    per-tensor quantize_dynamic, kept for comparison, does not have this."""
    from runtime.export.quantize import quantize

    fp32, _ = exported("tiny", "none")
    ids = heldout_batches(2, 24, 1)[0].numpy()
    diffs = {}
    for mode in ("int8", "int8-per-tensor"):
        q = tmp_path / f"{mode}.onnx"
        quantize(fp32, q, mode)
        sess = session(q)
        whole = sess.run(["logits"], {"input_ids": ids})[0]
        prefix = sess.run(["logits"], {"input_ids": ids[:, :9]})[0]
        diffs[mode] = float(np.abs(whole[:, :9] - prefix).max())
    assert diffs["int8"] <= 1e-4, diffs
    assert diffs["int8-per-tensor"] > 10 * max(diffs["int8"], 1e-5), diffs
