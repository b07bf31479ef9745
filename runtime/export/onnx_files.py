"""ONNX files on disk and onnxruntime sessions over them (torch-free).

An export writes `model.onnx` (the full graph), `model.decoder.onnx` (the
KV-cache decoder graph, `decoder_path`) and `model.report.json` side by side.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort


def decoder_path(model_path: str | Path) -> Path:
    """Where the decoder graph of `model.onnx` lives: `model.decoder.onnx`."""
    p = Path(model_path)
    return p.with_name(p.stem + ".decoder" + p.suffix)


def file_size(path: str | Path) -> int:
    """Bytes of an ONNX file plus any external data files it references."""
    path = Path(path)
    total = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    locations = set()
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                locations.add(entry.value)
    return total + sum((path.parent / loc).stat().st_size for loc in locations)


def session(path: str | Path, threads: int = 0) -> ort.InferenceSession:
    """An onnxruntime CPU session with ORT_ENABLE_ALL graph optimizations.

    `threads` intra-op threads (0: onnxruntime's default).
    """
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts,
                                providers=["CPUExecutionProvider"])
