"""Quantize an fp32 ONNX graph for onnxruntime.

Modes (`MODES`):

- ``none``: the fp32 graph, unchanged;
- ``int8``: dynamic quantization with per-token activation scales: int8
  weights per output channel, and each row (token) of a MatMul's input
  scaled by its own max |x| / 127 at run time, stored as uint8 with zero
  point 128, multiplied by onnxruntime's ``MatMulInteger`` (its U8S8 kernels,
  VNNI where present) and rescaled to fp32 (`quantize_int8_per_token`). A
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
COMPARISON_MODES = ("int8-per-tensor",)  # for benchmarks: onnxruntime's quantize_dynamic
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
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(value), name)


def quantize_int8_per_token(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite every weight MatMul ``y = x @ W`` of `model` (in place) as

        s = max(max|x_row|, 1e-8) / 127                 (per token, fp32)
        q = uint8(round(x / s) + 128)                   (zero point 128)
        y = float(MatMulInteger(q, W8, 128)) * s * sw   (W8 = round(W / sw))

    with W8 int8 per output column (sw = max|W_col| / 127). Inputs shared by
    several MatMuls (query, key, value) are quantized once. Returns `model`.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    matmuls = set(weight_matmuls(model))
    targets = {n.name for n in graph.node
               if n.name in matmuls and len(inits[n.input[1]].dims) == 2}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)
    added = [_const("q8tok_eps", np.float32(1e-8)), _const("q8tok_127", np.float32(127.0)),
             _const("q8tok_128", np.float32(128.0)), _const("q8tok_zp", np.uint8(128))]
    if opset >= 18:
        added.append(_const("q8tok_axes", np.array([-1], np.int64)))
    nodes, quantized_inputs, dropped = [], {}, set()
    for node in graph.node:
        if node.name not in targets:
            nodes.append(node)
            continue
        x, wname = node.input
        if x not in quantized_inputs:
            p = f"q8tok_{len(quantized_inputs)}"
            reduce = (helper.make_node("ReduceMax", [p + "_abs", "q8tok_axes"], [p + "_amax"],
                                       keepdims=1, name=p + "_ReduceMax") if opset >= 18 else
                      helper.make_node("ReduceMax", [p + "_abs"], [p + "_amax"], axes=[-1],
                                       keepdims=1, name=p + "_ReduceMax"))
            nodes += [
                helper.make_node("Abs", [x], [p + "_abs"], name=p + "_Abs"), reduce,
                helper.make_node("Max", [p + "_amax", "q8tok_eps"], [p + "_amax1"],
                                 name=p + "_Max"),
                helper.make_node("Div", [p + "_amax1", "q8tok_127"], [p + "_scale"],
                                 name=p + "_Scale"),
                helper.make_node("Div", [x, p + "_scale"], [p + "_scaled"], name=p + "_Div"),
                helper.make_node("Round", [p + "_scaled"], [p + "_round"], name=p + "_Round"),
                helper.make_node("Add", [p + "_round", "q8tok_128"], [p + "_shift"],
                                 name=p + "_Add"),
                helper.make_node("Cast", [p + "_shift"], [p + "_q"], to=TensorProto.UINT8,
                                 name=p + "_Cast")]
            quantized_inputs[x] = p
        p = quantized_inputs[x]
        w = numpy_helper.to_array(inits[wname]).astype(np.float32)  # (K, N)
        amax = np.abs(w).max(axis=0)
        sw = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        added += [_const(wname + "_q8tok", np.clip(np.round(w / sw), -127, 127).astype(np.int8)),
                  _const(wname + "_q8tok_scale", sw)]
        dropped.add(wname)
        y = node.output[0]
        nodes += [
            helper.make_node("MatMulInteger", [p + "_q", wname + "_q8tok", "q8tok_zp"],
                             [y + "_i32"], name=node.name + "_MatMulInteger"),
            helper.make_node("Cast", [y + "_i32"], [y + "_f32"], to=TensorProto.FLOAT,
                             name=node.name + "_CastF"),
            helper.make_node("Mul", [y + "_f32", p + "_scale"], [y + "_xs"],
                             name=node.name + "_MulX"),
            helper.make_node("Mul", [y + "_xs", wname + "_q8tok_scale"], [y],
                             name=node.name + "_MulW")]
    used = {i for n in nodes for i in n.input}
    keep = [i for i in graph.initializer if i.name not in dropped or i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep + added)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


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
