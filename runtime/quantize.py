"""Quantize an fp32 ONNX graph with onnxruntime's tools.

Modes (`MODES`):

- ``none``: the fp32 graph, unchanged;
- ``int8``: dynamic quantization, int8 weights per output channel, uint8
  activations quantized at run time (MatMulInteger / DynamicQuantizeMatMul);
- ``int8-static``: static QDQ quantization, int8 weights per channel and
  activation scales from a MinMax calibration over held-out data (a
  `CalibrationDataReader`). Activations are uint8 with a zero point on x86
  (onnxruntime's U8S8 kernels, VNNI where present: about 1.4x faster than
  symmetric int8 activations for gpt-mini here, at the same perplexity), int8
  symmetric elsewhere (ARM's S8S8 kernels);
- ``int4``: weight-only 4-bit block quantization into ``MatMulNBits``
  (block 32, symmetric), activations stay fp32.

Only MatMuls whose weight is a constant initializer are quantized (the
projections, the MLP and the output head); the activation x activation
products inside attention stay fp32. Inference sessions run with all graph
optimizations on (`session`).
"""

from __future__ import annotations

import logging
import platform
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx

MODES = ("none", "int8", "int8-static", "int4")
INT4_BLOCK = 32  # weights per quantization block for MatMulNBits


def session(path: str | Path, threads: int = 0):
    """An onnxruntime CPU session with ORT_ENABLE_ALL graph optimizations.

    `threads` intra-op threads (0: onnxruntime's default).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts,
                                providers=["CPUExecutionProvider"])


def weight_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names of the MatMul nodes whose second input is an initializer."""
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in inits]


class FeedReader:
    """A `CalibrationDataReader` over a list of input feeds (dicts of arrays)."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]):
        self._feeds = list(feeds)
        self._it: Iterator[dict[str, np.ndarray]] = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node a unique name (the quantizers select nodes by name)."""
    seen: set[str] = set()
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{i}"
        seen.add(n.name)
    return model


def quantize(src: str | Path, dst: str | Path, mode: str,
             calibration: Iterable[dict[str, np.ndarray]] | None = None) -> None:
    """Write the `mode`-quantized version of fp32 graph `src` to `dst`.

    `calibration` (feeds of the graph's inputs) is required for int8-static.
    """
    if mode not in MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; known: {', '.join(MODES)}")
    src, dst = Path(src), Path(dst)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizers warn on root about pre-processing
    try:
        _quantize(src, dst, mode, calibration)
    finally:
        root.setLevel(level)


def _quantize(src: Path, dst: Path, mode: str,
              calibration: Iterable[dict[str, np.ndarray]] | None) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    model = _named(onnx.load(str(src)))
    if mode == "none":
        onnx.save(model, str(dst))
        return
    if mode == "int4":
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )

        config = DefaultWeightOnlyQuantConfig(block_size=INT4_BLOCK, is_symmetric=True,
                                              accuracy_level=4)
        q = MatMulNBitsQuantizer(model, nodes_to_exclude=[], algo_config=config)
        q.process()
        q.model.save_model_to_file(str(dst), use_external_data_format=False)
        return
    nodes = weight_matmuls(model)
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        named = Path(tmp) / "named.onnx"
        onnx.save(model, str(named))
        if mode == "int8":
            quantize_dynamic(named, dst, weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes,
                             extra_options={"MatMulConstBOnly": True})
            return
        if calibration is None:
            raise ValueError("int8-static needs calibration feeds")
        x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
        quantize_static(named, dst, FeedReader(calibration), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8 if x86 else QuantType.QInt8,
                        weight_type=QuantType.QInt8, per_channel=True,
                        op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": not x86,
                                       "MatMulConstBOnly": True})


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
