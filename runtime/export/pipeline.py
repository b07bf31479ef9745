"""`sandbox export`: compress a trained run and export it to verified ONNX.

    report = export("runs/mini", "model.onnx", quantize="int8", prune=0.25,
                    distill_steps=200)

Steps: load the run's newest complete checkpoint into one fp32 model
(`source`); export it unchanged as the fp32 baseline (`graphs`); with
`prune` > 0 remove heads and MLP channels (`prune`) and distil the pruned
student from the unpruned teacher for `distill_steps` steps on the training
split (`distill`); export the (pruned) model's full and decoder graphs
(`graphs`); quantize both (`quantize`); measure against PyTorch and the
baseline on held-out data and check that greedy decoding with the cache,
without it, and in PyTorch give the same tokens (`evaluate`).

`Exporter` exports one run several ways (benchmarks, tests, a notebook
comparing modes): the run is loaded once, and the unpruned fp32 graphs and
each pruned (and distilled) student are made once and reused by its later
calls. `export()` is one call of a fresh `Exporter`.

Files written: OUT (e.g. model.onnx), OUT's decoder graph (model.decoder.onnx),
the run's tokenizer (model.tokenizer.json; the byte tokenizer for byte-level
data) and the report (model.report.json). Everything is produced in a temporary
folder next to OUT and renamed into place only on success, the model last.
Models with multi-head latent attention export the same way (their decoder
caches MLA's latent), but are not pruned.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.data.tokenizer import byte_tokenizer
from runtime.export import evaluate as ev
from runtime.export.distill import TrainLog, distill
from runtime.export.generate import tokenizer_path
from runtime.export.graphs import OPSET, GraphInfo, export_decoder, export_full, shape_of
from runtime.export.onnx_files import decoder_path, file_size
from runtime.export.prune import PruneResult, n_params
from runtime.export.prune import prune as prune_model
from runtime.export.quantize import COMPARISON_MODES, MODES, decoder_calibration, quantize
from runtime.export.report import ExportReport, versions
from runtime.export.source import heldout_batches, load_run, train_batches
from runtime.layers.mla import LatentAttention
from runtime.model import GPT
from sandbox.errors import SandboxError


@dataclass
class Student:
    """The model to export and how it was made from the trained one."""

    model: GPT
    prune_result: PruneResult | None = None
    distill_log: TrainLog | None = None


def check_options(out: Path, quantize: str, prune: float, distill_steps: int) -> None:
    """One-line `SandboxError` for a bad option, before any work."""
    if quantize not in MODES + COMPARISON_MODES:
        raise SandboxError(f"--quantize: unknown mode '{quantize}'; known: {', '.join(MODES)}")
    if not 0.0 <= prune < 1.0:
        raise SandboxError(f"--prune: fraction must be in [0, 1), got {prune}")
    if distill_steps < 0:
        raise SandboxError(f"--distill-steps: must be >= 0, got {distill_steps}")
    if out.suffix != ".onnx":
        raise SandboxError(f"--out: expected a path ending in .onnx, got {out}")


def check_prunable(model: GPT, prune: float) -> None:
    """One-line `SandboxError` when `prune` asks to prune a model it cannot."""
    if prune > 0 and isinstance(model.layers["0"].attention, LatentAttention):
        raise SandboxError(f"--prune: {prune}: structured pruning removes mha / gqa heads; "
                           "this run's model uses multi-head latent attention "
                           "(model.attention_kind = 'mla'); export it with --prune 0")


def quantize_or_fail(src: Path, dst: Path, mode: str, calibration: list | None) -> None:
    """Quantize, turning a quantizer failure into one line for the user."""
    try:
        quantize(src, dst, mode, calibration)
    except Exception as e:
        raise SandboxError(f"quantize {mode}: onnxruntime failed on {src.name} "
                           f"({e.__class__.__name__}: {str(e).splitlines()[0][:200]})") from None


class Exporter:
    """Exports one trained run, possibly several ways (see the module docstring).

    The teacher's fp32 graphs live in a temporary folder until `close()`
    (or the end of a `with` block).
    """

    def __init__(self, run_dir: str | Path):
        self.run = load_run(run_dir)
        self._dir = Path(tempfile.mkdtemp(prefix="export-fp32-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)
        self._graphs: dict[str, GraphInfo] = {}
        self._students: dict[tuple, Student] = {}

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Delete the kept fp32 graphs."""
        self._cleanup()

    def teacher_graph(self, kind: str) -> tuple[Path, GraphInfo]:
        """The unpruned model's fp32 graph, "full" or "decoder", made once."""
        if kind not in ("full", "decoder"):
            raise ValueError(f"graph kind must be 'full' or 'decoder', got {kind!r}")
        path = self._dir / f"{kind}.onnx"
        if kind not in self._graphs:
            make = export_full if kind == "full" else export_decoder
            self._graphs[kind] = make(self.run.model, path)
        return path, self._graphs[kind]

    def student(self, prune: float, distill_steps: int, distill_batch: int = 8,
                distill_lr: float = 5e-4, seed: int = 0) -> Student:
        """The trained model itself (prune 0), else a copy with `prune` of its
        heads and MLP channels removed and distilled for `distill_steps` steps
        of (`distill_batch`, context) tokens; made once per setting."""
        if prune <= 0:
            return Student(self.run.model)
        if self.run.plan.model.moe:
            raise SandboxError("--prune: pruning removes heads and dense MLP channels; it does "
                               "not prune a mixture of experts' routed experts (prune 0)")
        key = (prune, distill_steps, distill_batch, distill_lr, seed)
        if key not in self._students:
            teacher = self.run.model
            ctx, data = self.run.plan.model.seq_len, self.run.plan.train.data
            cal_it = train_batches(4, ctx, seed + 1, data)
            model, result = prune_model(teacher, prune, [next(cal_it)[:, :-1] for _ in range(4)])
            log = None
            if distill_steps:
                log = distill(model, teacher, train_batches(distill_batch, ctx, seed + 2, data),
                              distill_steps, lr=distill_lr)
            self._students[key] = Student(model.eval(), result, log)
        return self._students[key]

    def export(self, out: str | Path, quantize: str = "int8", prune: float = 0.0,
               distill_steps: int = 0, *, eval_batches: int = 4, eval_batch: int = 4,
               calib_batches: int = 8, latency_batch: int = 1, latency_length: int | None = None,
               latency_threads: int = 1, latency_repeats: int = 20, distill_batch: int = 8,
               distill_lr: float = 5e-4, decode_tokens: int = 16, decode_prompts: int = 2,
               seed: int = 0) -> ExportReport:
        """Export the run to ONNX file `out`; returns (and writes) the report.

        quantize: none | int8 | int8-static | int4 (or int8-per-tensor:
        onnxruntime's quantize_dynamic, for comparison). prune: fraction of
        heads and MLP channels removed per layer. distill_steps: steps of
        distillation (batches of `distill_batch` x context tokens, peak
        learning rate `distill_lr`) after pruning.
        Held-out data: `eval_batches` batches of `eval_batch` x context tokens
        for the metrics, the next `calib_batches` batches (2 x context) for
        static calibration. Latency: `latency_batch` x `latency_length`
        (default: the context) ids, median of `latency_repeats` runs on
        `latency_threads` threads, in milliseconds.
        Decoding check: greedy `decode_tokens` new tokens after the first 8
        tokens of the first `decode_prompts` held-out rows (at most
        eval_batches x eval_batch), with the cache, without it and in PyTorch.
        """
        t0 = time.perf_counter()
        out = Path(out)
        check_options(out, quantize, float(prune), int(distill_steps))
        check_prunable(self.run.model, float(prune))
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.manual_seed(seed)
        run = self.run
        teacher, spec = run.model, run.plan.model
        ctx = spec.seq_len
        length = latency_length or ctx
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.stem}.tmp-", dir=out.parent))
        try:
            held = heldout_batches(eval_batch, ctx, eval_batches + calib_batches,
                                   run.plan.train.data)
            evals = held[:eval_batches]
            calib = [b[:2] for b in held[eval_batches:]]
            baseline, base_info = self.teacher_graph("full")
            stu = self.student(prune, distill_steps, distill_batch, distill_lr, seed)
            student = stu.model
            fp32, fp32_dec = tmp / "fp32.onnx", tmp / "fp32.decoder.onnx"
            if student is teacher:
                shutil.copyfile(baseline, fp32)
                graphs = {"model": base_info.to_dict()}
                dec_src, dec_info = self.teacher_graph("decoder")
                shutil.copyfile(dec_src, fp32_dec)
                graphs["decoder"] = dec_info.to_dict()
            else:
                graphs = {"model": export_full(student, fp32).to_dict(),
                          "decoder": export_decoder(student, fp32_dec).to_dict()}
            final = tmp / out.name
            final_dec = decoder_path(final)
            calib_full = [{"input_ids": b.numpy().astype(np.int64)} for b in calib]
            calib_dec = decoder_calibration(fp32_dec, calib) if quantize == "int8-static" \
                else None
            quantize_or_fail(fp32, final, quantize, calib_full)
            quantize_or_fail(fp32_dec, final_dec, quantize, calib_dec)
            graphs["model"]["path"], graphs["decoder"]["path"] = str(out), str(decoder_path(out))
            ref_t = ev.torch_logits(teacher, evals)
            ref_s = ev.torch_logits(student, evals) if student is not teacher else ref_t
            base_o = ev.onnx_logits(baseline, evals)
            cand_o = ev.onnx_logits(final, evals)
            vs_exported = ev.agreement(cand_o, ref_s)
            lat_base, lat = ev.latency_ms([baseline, final], latency_batch, length, spec.vocab,
                                          repeats=latency_repeats, threads=latency_threads)
            rows = [b[i] for b in evals for i in range(b.shape[0])]
            prompts = [r[:8].tolist() for r in rows[:decode_prompts]]
            report = ExportReport(
                size_bytes=file_size(final), baseline_size_bytes=file_size(baseline),
                max_abs_diff=vs_exported.max_abs_diff,
                top1_agreement=ev.agreement(cand_o, ref_t).top1_agreement,
                ppl_torch=ev.perplexity(ref_s, evals), ppl_onnx=ev.perplexity(cand_o, evals),
                latency_ms=lat, baseline_latency_ms=lat_base,
                baseline_ppl_torch=ev.perplexity(ref_t, evals),
                baseline_ppl_onnx=ev.perplexity(base_o, evals),
                baseline_max_abs_diff=ev.agreement(base_o, ref_t).max_abs_diff,
                top1_agreement_vs_exported=vs_exported.top1_agreement,
                quantize=quantize, prune=float(prune), distill_steps=int(distill_steps),
                opset=OPSET, latency_batch=latency_batch, latency_length=length,
                latency_threads=latency_threads, eval_batches=eval_batches,
                eval_batch=eval_batch, eval_length=ctx, shape=shape_of(student),
                baseline_shape=shape_of(teacher), params=n_params(student),
                baseline_params=n_params(teacher), decoder_size_bytes=file_size(final_dec),
                graphs=graphs, decode_check={},
                prune_result=stu.prune_result.to_dict() if stu.prune_result else None,
                distill_log=stu.distill_log.to_dict() if stu.distill_log else None,
                run_dir=str(run.run_dir), checkpoint=str(run.checkpoint),
                files={"model": str(out), "decoder": str(decoder_path(out)),
                       "report": str(out.with_suffix(".report.json")),
                       "tokenizer": str(tokenizer_path(out))},
                versions=versions(), wall_s=0.0)
            tok_tmp = tokenizer_path(final)  # generate encodes and decodes with it
            if run.tokenizer is not None:
                shutil.copyfile(run.tokenizer, tok_tmp)
            else:
                byte_tokenizer().save(tok_tmp)
            report_tmp = final.with_suffix(".report.json")  # Generator reads the context here
            report_tmp.write_text(json.dumps(report.to_dict(), indent=2))
            report.decode_check = ev.decode_check(final, student, prompts, decode_tokens)
            report.wall_s = time.perf_counter() - t0
            report_tmp.write_text(json.dumps(report.to_dict(), indent=2))
            os.replace(final_dec, decoder_path(out))
            os.replace(tok_tmp, tokenizer_path(out))
            os.replace(report_tmp, out.with_suffix(".report.json"))
            os.replace(final, out)
            return report
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def export(run_dir: str | Path, out: str | Path, quantize: str = "int8", prune: float = 0.0,
           distill_steps: int = 0, **options: Any) -> ExportReport:
    """Export run `run_dir` to ONNX file `out`; returns (and writes) the report.

    `options`: the keyword options of `Exporter.export` (evaluation,
    latency, distillation and decoding-check settings).
    """
    check_options(Path(out), quantize, float(prune), int(distill_steps))
    with Exporter(run_dir) as exporter:
        return exporter.export(out, quantize, prune, distill_steps, **options)
