"""Quantize an fp32 ONNX graph for onnxruntime.

Modes (`MODES`):

- ``none``: the fp32 graph, unchanged;
- ``int8``: dynamic quantization with per-token activation scales: int8
  weights per output channel, and each row (token) of a MatMul's input
  scaled by its own max |x| / 127 at run time (``QuantizeLinear`` per row,
  uint8 with zero point 128), multiplied by onnxruntime's ``MatMulInteger``
  (its U8S8 kernels, VNNI where present) and rescaled to fp32
  (`runtime.export.int8`; standard ONNX ops only); the token embedding
  (its gather) and a head tied to it share one int8 table with a scale
  per vocabulary row. A
  token's quantized values depend on that token alone, so the full graph and
  the KV-cache decoder (which sees one new token per step) compute the same
  numbers and greedy decoding gives the same tokens with and without the
  cache. onnxruntime's own `quantize_dynamic` (mode ``int8-per-tensor``, kept
  for comparison, not offered by the CLI) scales each whole input tensor at
  once: the scale of a token then depends on the other tokens of the call,
  the two graphs round differently, and greedy decoding with and without the
  cache can part at near-ties;
- ``int8-static``: static QDQ quantization (`quantize_static`), int8 weights
  per channel and activation scales from a MinMax calibration over held-out
  data (a `CalibrationDataReader`). Activations are uint8 with a zero point
  on x86 (onnxruntime's U8S8 kernels: about 1.4x faster than symmetric int8
  activations for gpt-mini here, at the same perplexity), int8 symmetric
  elsewhere (ARM's S8S8 kernels);
- ``int4``: weight-only 4-bit block quantization into ``MatMulNBits``
  (block 32, symmetric; accuracy level 4: activations quantized to int8 per
  block of each row at run time).

Only MatMuls whose weight is a constant initializer are quantized (the
projections, the MLP, the untied output head; int8 also the head tied to the
token embedding and the embedding gathers); the activation x activation
products inside attention stay fp32. The int8-static calibration of the decoder graph
(`decoder_calibration`) feeds it each held-out batch twice: the first half
with an empty past, then the second half with the fp32 decoder's past.
"""

from __future__ import annotations

import logging
import platform
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
import torch

from runtime.export.int8 import quantize_int8_per_token, weight_matmuls
from runtime.export.onnx_files import session

MODES = ("none", "int8", "int8-static", "int4")
COMPARISON_MODES = ("int8-per-tensor",)  # for benchmarks: onnxruntime's quantize_dynamic
INT4_BLOCK = 32  # weights per quantization block for MatMulNBits


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
    if mode not in MODES + COMPARISON_MODES:
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
    # The quantizers are imported here, while `quantize` holds the root logger
    # at ERROR, and the int4 one only for int4: importing matmul_nbits_quantizer
    # calls logging.basicConfig(level=INFO), which at module level would leave
    # the root logger printing every library's INFO lines (onnxscript's export).
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
            onnx.save(quantize_int8_per_token(model), str(dst))
            return
        if mode == "int8-per-tensor":
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


def decoder_calibration(fp32_decoder: str | Path,
                        batches: list[torch.Tensor]) -> list[dict[str, np.ndarray]]:
    """Calibration feeds for the decoder graph: each (batch, seq) token batch's
    first half with an empty past, then its second half with the past that
    the fp32 decoder returned for the first."""
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
