"""`sandbox export`: compress a trained run and export it to verified ONNX.

    report = export("runs/mini", "model.onnx", quantize="int8", prune=0.25,
                    distill_steps=200)

Steps: load the run's newest complete checkpoint into one fp32 model
(`runtime.export_source`); export it unchanged as the fp32 baseline; with
`prune` > 0 remove heads and MLP channels (`runtime.prune`) and distil the
pruned student from the unpruned teacher for `distill_steps` steps on the
training split (`runtime.distill`); export the (pruned) model's full and
decoder graphs (`runtime.onnx_export`); quantize both (`runtime.quantize`);
measure against PyTorch and the baseline on held-out data
(`runtime.evaluate_onnx`) and check that greedy decoding with the cache, without
it, and in PyTorch give the same tokens (`runtime.generate`).

Files written: OUT (e.g. model.onnx), OUT's decoder graph (model.decoder.onnx)
and the report (model.report.json). Everything is produced in a temporary
folder next to OUT and renamed into place only on success, the model last.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime import distill as distill_mod
from runtime import evaluate_onnx as ev
from runtime import export_source as src
from runtime.generate import Generator, torch_greedy
from runtime.onnx_export import (
    OPSET,
    GraphInfo,
    decoder_path,
    export_decoder,
    export_full,
    shape_of,
)
from runtime.prune import PruneResult, n_params
from runtime.prune import prune as prune_model
from runtime.quantize import COMPARISON_MODES, MODES, file_size, quantize, session
from sandbox.errors import SandboxError


@dataclass
class ExportReport:
    """The `model.report.json` contract (DESIGN.md) plus how it was measured.

    Sizes in bytes, latencies in milliseconds (median, CPU, onnxruntime),
    perplexities over the held-out split. `baseline_*` is the uncompressed
    fp32 export of the unpruned model. `max_abs_diff` compares the file with
    the PyTorch model it was exported from (pruned if pruning);
    `top1_agreement` compares the file's argmax with the unpruned trained
    PyTorch model.
    """

    size_bytes: int
    baseline_size_bytes: int
    max_abs_diff: float
    top1_agreement: float
    ppl_torch: float
    ppl_onnx: float
    latency_ms: float
    baseline_latency_ms: float
    baseline_ppl_torch: float
    baseline_ppl_onnx: float
    baseline_max_abs_diff: float
    top1_agreement_vs_exported: float
    quantize: str
    prune: float
    distill_steps: int
    opset: int
    latency_batch: int
    latency_length: int
    latency_threads: int
    eval_batches: int
    eval_batch: int
    eval_length: int
    shape: dict
    baseline_shape: dict
    params: int
    baseline_params: int
    decoder_size_bytes: int
    graphs: dict
    decode_check: dict
    prune_result: dict | None
    distill_log: dict | None
    run_dir: str
    checkpoint: str
    files: dict
    versions: dict
    wall_s: float
    extra: dict = field(default_factory=dict)

    @property
    def size_ratio(self) -> float:
        return self.size_bytes / self.baseline_size_bytes

    @property
    def speedup(self) -> float:
        return self.baseline_latency_ms / self.latency_ms

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size_ratio"] = self.size_ratio
        d["speedup"] = self.speedup
        return d

    def _repr_html_(self) -> str:
        from sandbox.report_html import table_html

        rows = [("mode", f"quantize={self.quantize} prune={self.prune} "
                         f"distill_steps={self.distill_steps}"),
                ("size (bytes)", f"{self.size_bytes:,} ({self.size_ratio:.3f} of fp32 "
                                 f"{self.baseline_size_bytes:,})"),
                ("latency (ms)", f"{self.latency_ms:.2f} vs fp32 {self.baseline_latency_ms:.2f} "
                                 f"({self.speedup:.2f}x) at batch {self.latency_batch} x "
                                 f"{self.latency_length}, {self.latency_threads} thread(s)"),
                ("perplexity", f"onnx {self.ppl_onnx:.4f}, torch {self.ppl_torch:.4f}, "
                               f"fp32 baseline {self.baseline_ppl_onnx:.4f}"),
                ("max |logit diff| vs torch", f"{self.max_abs_diff:.3g}"),
                ("top-1 agreement", f"{self.top1_agreement:.4f}"),
                ("shape", json.dumps({k: v for k, v in self.shape.items()
                                      if not k.endswith("per_layer")})),
                ("decode check", json.dumps(self.decode_check))]
        return table_html(rows, "export report")


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "cpus": str(os.cpu_count())}


def _decoder_calibration(fp32_decoder: Path, batches: list[torch.Tensor]) -> list[dict]:
    """Feeds for the decoder graph: each batch's first half with an empty past,
    then its second half with the past that the fp32 decoder returned."""
    sess = session(fp32_decoder)
    names = [o.name for o in sess.get_outputs()]
    feeds = []
    for b in batches:
        ids = b.numpy().astype(np.int64)
        half = ids.shape[1] // 2
        first = {"input_ids": ids[:, :half]}
        for inp in sess.get_inputs()[1:]:
            first[inp.name] = np.zeros((ids.shape[0], inp.shape[1], 0, inp.shape[3]), np.float32)
        res = sess.run(names, first)
        second = {"input_ids": ids[:, half:]}
        second.update({n.replace("present", "past"): r for n, r in zip(names[1:], res[1:],
                                                                       strict=True)})
        feeds += [first, second]
    return feeds


def _decode_check(model_path: Path, model, prompts: list[list[int]], n: int) -> dict:
    """Greedy tokens with the cache, without it and from PyTorch, per prompt.

    Where the file's tokens part from PyTorch's, `torch_margin_at_divergence`
    holds PyTorch's logit of its own token minus its logit of the file's
    token at the first differing position (a near-tie when small)."""
    gen = Generator.open(model_path)
    cached = gen.generate(prompts, n, use_cache=True)
    uncached = gen.generate(prompts, n, use_cache=False)
    ref = torch_greedy(model, prompts, len(cached[0]))
    margins = []
    for p, c, r in zip(prompts, cached, ref, strict=True):
        if c != r:
            j = next(i for i, (a, b) in enumerate(zip(c, r, strict=True)) if a != b)
            with torch.no_grad():
                logits = model(torch.tensor([p + r[:j]]))[0, -1]
            margins.append(float(logits[r[j]] - logits[c[j]]))
    return {"new_tokens": len(cached[0]), "batch": len(prompts),
            "cache_matches_no_cache": cached == uncached, "cache_matches_torch": cached == ref,
            "prompts_cache_eq_no_cache": sum(a == b for a, b in zip(cached, uncached,
                                                                    strict=True)),
            "prompts_cache_eq_torch": sum(a == b for a, b in zip(cached, ref, strict=True)),
            "prompts_no_cache_eq_torch": sum(a == b for a, b in zip(uncached, ref,
                                                                    strict=True)),
            "torch_margin_at_divergence": margins,
            "tokens_equal_fraction": float(np.mean(np.array(cached) == np.array(ref)))}


def _check_options(out: Path, quantize: str, prune: float, distill_steps: int) -> None:
    if quantize not in MODES + COMPARISON_MODES:
        raise SandboxError(f"--quantize: unknown mode '{quantize}'; known: {', '.join(MODES)}")
    if not 0.0 <= prune < 1.0:
        raise SandboxError(f"--prune: fraction must be in [0, 1), got {prune}")
    if distill_steps < 0:
        raise SandboxError(f"--distill-steps: must be >= 0, got {distill_steps}")
    if out.suffix != ".onnx":
        raise SandboxError(f"--out: expected a path ending in .onnx, got {out}")


def export(run_dir: str | Path, out: str | Path, quantize: str = "int8", prune: float = 0.0,
           distill_steps: int = 0, *, eval_batches: int = 4, eval_batch: int = 4,
           calib_batches: int = 8, latency_batch: int = 1, latency_length: int | None = None,
           latency_threads: int = 1, latency_repeats: int = 20, distill_batch: int = 8,
           distill_lr: float = 5e-4, decode_tokens: int = 16, decode_prompts: int = 2,
           seed: int = 0,
           fp32_cache: str | Path | None = None) -> ExportReport:
    """Export run `run_dir` to ONNX file `out`; returns (and writes) the report.

    quantize: none | int8 | int8-static | int4 (or int8-per-tensor:
    onnxruntime's quantize_dynamic, for comparison). prune: fraction of heads and
    MLP channels removed per layer. distill_steps: steps of distillation
    (batches of `distill_batch` x context tokens) after pruning.
    Held-out data: `eval_batches` batches of `eval_batch` x context tokens for
    the metrics, the next `calib_batches` batches (2 x context) for static
    calibration. Latency: `latency_batch` x `latency_length` (default: the
    context) ids, median of `latency_repeats` runs on `latency_threads` threads.
    Decoding check: greedy `decode_tokens` new tokens after the first 8 tokens
    of the first `decode_prompts` held-out rows (at most eval_batches x
    eval_batch), with the cache, without it and in PyTorch.
    `fp32_cache`: a folder (one per run) where the unpruned fp32 graphs and
    the pruned (and distilled) students are kept and reused by later calls
    (benchmarks exporting one run many ways).
    """
    t0 = time.perf_counter()
    out = Path(out)
    _check_options(out, quantize, float(prune), int(distill_steps))
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.manual_seed(seed)
    run = src.load_run(run_dir)
    teacher, spec = run.model, run.plan.model
    ctx = spec.seq_len
    length = latency_length or ctx
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.stem}.tmp-", dir=out.parent))
    try:
        data = run.plan.train.data
        held = src.heldout_batches(eval_batch, ctx, eval_batches + calib_batches, data)
        evals = held[:eval_batches]
        calib = [b[:2] for b in held[eval_batches:]]
        baseline = tmp / "baseline.onnx"
        base_info = _cached(fp32_cache, "baseline.onnx", baseline,
                            lambda p: export_full(teacher, p))
        student, pruned, dlog = teacher, None, None
        if prune > 0:
            def make_student():
                cal_it = src.train_batches(4, ctx, seed + 1, data)
                cal = [next(cal_it)[:, :-1] for _ in range(4)]
                stu, pr = prune_model(teacher, prune, cal)
                log = None
                if distill_steps:
                    log = distill_mod.distill(stu, teacher,
                                              src.train_batches(distill_batch, ctx, seed + 2,
                                                                data),
                                              distill_steps, lr=distill_lr)
                return stu, pr, log

            key = f"student-p{prune:g}-d{distill_steps}-b{distill_batch}-lr{distill_lr:g}-s{seed}"
            student, pruned, dlog = _cached_student(fp32_cache, key, make_student)
            student.eval()
        fp32 = tmp / "fp32.onnx"
        if student is teacher:
            shutil.copyfile(baseline, fp32)
            graphs = {"model": base_info.to_dict()}
        else:
            graphs = {"model": export_full(student, fp32).to_dict()}
        fp32_dec = tmp / "fp32.decoder.onnx"
        if student is teacher:
            graphs["decoder"] = _cached(fp32_cache, "decoder.onnx", fp32_dec,
                                        lambda p: export_decoder(teacher, p)).to_dict()
        else:
            graphs["decoder"] = export_decoder(student, fp32_dec).to_dict()
        final = tmp / out.name
        final_dec = decoder_path(final)
        calib_full = [{"input_ids": b.numpy().astype(np.int64)} for b in calib]
        calib_dec = _decoder_calibration(fp32_dec, calib) if quantize == "int8-static" else None
        quantize_fn(fp32, final, quantize, calib_full)
        quantize_fn(fp32_dec, final_dec, quantize, calib_dec)
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
            latency_threads=latency_threads, eval_batches=eval_batches, eval_batch=eval_batch,
            eval_length=ctx, shape=shape_of(student), baseline_shape=shape_of(teacher),
            params=n_params(student), baseline_params=n_params(teacher),
            decoder_size_bytes=file_size(final_dec), graphs=graphs, decode_check={},
            prune_result=pruned.to_dict() if pruned else None,
            distill_log=dlog.to_dict() if dlog else None, run_dir=str(run.run_dir),
            checkpoint=str(run.checkpoint),
            files={"model": str(out), "decoder": str(decoder_path(out)),
                   "report": str(out.with_suffix(".report.json"))},
            versions=_versions(), wall_s=0.0)
        report_tmp = final.with_suffix(".report.json")  # Generator reads the context here
        report_tmp.write_text(json.dumps(report.to_dict(), indent=2))
        report.decode_check = _decode_check(final, student, prompts, decode_tokens)
        report.wall_s = time.perf_counter() - t0
        report_tmp.write_text(json.dumps(report.to_dict(), indent=2))
        os.replace(final_dec, decoder_path(out))
        os.replace(report_tmp, out.with_suffix(".report.json"))
        os.replace(final, out)
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cached(cache: str | Path | None, name: str, dst: Path, make) -> GraphInfo:
    """`make(dst)`, or a copy of the cached graph and its info when present."""
    if cache is None:
        return make(dst)
    cache = Path(cache)
    cached, info = cache / name, cache / (name + ".json")
    if not (cached.is_file() and info.is_file()):
        cache.mkdir(parents=True, exist_ok=True)
        made = make(dst)
        shutil.copyfile(dst, cached)
        info.write_text(json.dumps(made.to_dict()))
        return made
    shutil.copyfile(cached, dst)
    return GraphInfo(**json.loads(info.read_text()))


def _cached_student(cache: str | Path | None, key: str, make):
    """`make()` -> (student, PruneResult, TrainLog | None), or the cached result
    of an earlier call with the same `key` (pruning and distillation settings)."""
    if cache is None:
        return make()
    path = Path(cache) / f"{key}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=False)
        log = distill_mod.TrainLog(**saved["dlog"]) if saved["dlog"] else None
        return saved["model"], PruneResult(**saved["pruned"]), log
    student, pruned, log = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": student, "pruned": pruned.to_dict(),
                "dlog": log.to_dict() if log else None}, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)
    return student, pruned, log


def quantize_fn(srcp: Path, dst: Path, mode: str, calibration: list | None) -> None:
    """Quantize, turning a quantizer failure into one line for the user."""
    try:
        quantize(srcp, dst, mode, calibration)
    except Exception as e:
        raise SandboxError(f"quantize {mode}: onnxruntime failed on {srcp.name} "
                           f"({e.__class__.__name__}: {str(e).splitlines()[0][:200]})") from None
