"""The export report: `model.report.json` (DESIGN.md contract) as a dataclass."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx
import onnxruntime
import torch

from sandbox.report_html import table_html


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


def versions() -> dict[str, str]:
    """Versions of the libraries that made and measured the files, and the machine."""
    return {"torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "cpus": str(os.cpu_count())}
