"""Quantize an fp32 ONNX graph for onnxruntime.

Modes (`MODES`):

- ``none``: the fp32 graph, unchanged;
- ``int8``: dynamic quantization with per-token activation scales: int8
  weights per output channel, and each row (token) of a MatMul's input
  scaled by its own max |x| / 127 at run time (``QuantizeLinear`` per row,
  uint8 with zero point 128), multiplied by onnxruntime's ``MatMulInteger``
  (its U8S8 kernels, VNNI where present) and rescaled to fp32
  (`quantize_int8_per_token`; standard ONNX ops only). A
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
projections, the MLP, and the output head unless it is tied to the token
embedding, which stays fp32 and is stored once); the activation x activation
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
from onnx import TensorProto, helper, numpy_helper

from runtime.export.onnx_files import session

MODES = ("none", "int8", "int8-static", "int4")
COMPARISON_MODES = ("int8-per-tensor",)  # for benchmarks: onnxruntime's quantize_dynamic
INT4_BLOCK = 32  # weights per quantization block for MatMulNBits


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


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def quantize_int8_per_token(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite every weight MatMul ``y = x @ W`` of `model` (in place) as

        x2 = x reshaped to (tokens, K)
        s  = max(max|x2_row|, 1e-8) / 127                  (per token, fp32)
        q  = QuantizeLinear(x2, s, 128) along axis 0        (uint8, zero point 128)
        y  = (float(MatMulInteger(q, W8, 128)) * s * sw) reshaped back

    with W8 = round(W / sw) int8 per output column (sw = max|W_col| / 127).
    Inputs shared by several MatMuls (query, key, value) are quantized once.
    Needs opset >= 18 (ReduceMax with axes as an input). Returns `model`.
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 18:
        raise ValueError(f"int8 per-token quantization needs opset >= 18, got {opset}")
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    matmuls = set(weight_matmuls(model))
    targets = {n.name for n in graph.node
               if n.name in matmuls and len(inits[n.input[1]].dims) == 2}
    c = "q8tok_"
    added = [_const(c + "eps", np.float32(1e-8)), _const(c + "127", np.float32(127.0)),
             _const(c + "last", np.array([-1], np.int64)), _const(c + "zero", np.array([0],
                                                                                       np.int64)),
             _const(c + "zp", np.array([128], np.uint8)), _const(c + "zp0", np.uint8(128))]
    nodes, quantized_inputs, dropped = [], {}, set()

    def node(op: str, inputs: list[str], output: str, **attrs) -> onnx.NodeProto:
        return helper.make_node(op, inputs, [output], name=output + "_" + op, **attrs)

    for n in graph.node:
        if n.name not in targets:
            nodes.append(n)
            continue
        x, wname = n.input
        if x not in quantized_inputs:
            p = f"{c}{len(quantized_inputs)}_"
            nodes += [
                node("Shape", [x], p + "shape"),
                node("Slice", [p + "shape", c + "zero", c + "last"], p + "lead"),
                node("Shape", [x], p + "k", start=-1),
                node("Concat", [c + "last", p + "k"], p + "shape2d", axis=0),
                node("Reshape", [x, p + "shape2d"], p + "x2d"),
                node("Abs", [p + "x2d"], p + "abs"),
                node("ReduceMax", [p + "abs", c + "last"], p + "amax", keepdims=0),
                node("Max", [p + "amax", c + "eps"], p + "amax1"),
                node("Div", [p + "amax1", c + "127"], p + "scale"),
                node("Shape", [p + "scale"], p + "tokens"),
                node("Expand", [c + "zp", p + "tokens"], p + "zps"),
                node("QuantizeLinear", [p + "x2d", p + "scale", p + "zps"], p + "q", axis=0),
                node("Unsqueeze", [p + "scale", c + "last"], p + "scale_col")]
            quantized_inputs[x] = p
        p = quantized_inputs[x]
        w = numpy_helper.to_array(inits[wname]).astype(np.float32)  # (K, N)
        amax = np.abs(w).max(axis=0)
        sw = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        wq = wname + "_q8tok"
        added += [_const(wq, np.clip(np.round(w / sw), -127, 127).astype(np.int8)),
                  _const(wq + "_scale", sw), _const(wq + "_n", np.array([w.shape[1]], np.int64))]
        dropped.add(wname)
        y = n.output[0]
        nodes += [
            node("MatMulInteger", [p + "q", wq, c + "zp0"], y + "_i32"),
            node("Cast", [y + "_i32"], y + "_f32", to=TensorProto.FLOAT),
            node("Mul", [y + "_f32", p + "scale_col"], y + "_xs"),
            node("Mul", [y + "_xs", wq + "_scale"], y + "_2d"),
            node("Concat", [p + "lead", wq + "_n"], y + "_shape", axis=0),
            helper.make_node("Reshape", [y + "_2d", y + "_shape"], [y], name=y + "_Reshape")]
    used = {i for n in nodes for i in n.input}
    keep = [i for i in graph.initializer if i.name not in dropped or i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep + added)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


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
