"""int8 with per-token activation scales: the `int8` mode of `runtime.export.quantize`.

Every weight MatMul ``y = x @ W`` (W a constant (K, N) initializer, or the
transpose of one: the output head tied to the token embedding) becomes

    x2 = x reshaped to (tokens, K)
    s  = max(max|x2_row|, 1e-8) / 127                  (per token, fp32)
    q  = QuantizeLinear(x2, s, 128) along axis 0        (uint8, zero point 128)
    y  = (float(MatMulInteger(q, W8, 128)) * s * sw) reshaped back

with W8 = round(W / sw) int8 per output column (sw = max|W_col| / 127).
Inputs shared by several MatMuls (query, key, value) are quantized once.

Every Gather of rows from a constant 2-D table E (the token and learned
position embeddings) becomes ``float(Gather(E8, ids)) * Gather(se, ids)``
with E8 = round(E / se) int8 per row (se = max|E_row| / 127). A head tied to
E is ``x @ E^T``: its output columns are E's rows, so it uses the same E8
(transposed by a node that onnxruntime folds at load) and the same scales,
and the file stores the table once, in int8. With a large vocabulary the
embedding is most of the model: left in fp32 it would be most of the file.

A token's quantized values depend on that token alone, so the full graph and
the KV-cache decoder compute the same numbers. Standard ONNX ops only;
needs opset >= 18 (ReduceMax with axes as an input).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

P = "q8tok_"  # prefix of every added name


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _node(op: str, inputs: list[str], output: str, **attrs) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [output], name=output + "_" + op, **attrs)


def weight_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names of the MatMul nodes whose second input is an initializer."""
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in inits]


def _float_2d(init: onnx.TensorProto | None) -> bool:
    return init is not None and len(init.dims) == 2 and init.data_type == TensorProto.FLOAT


def _transposed_tables(graph: onnx.GraphProto, inits: dict) -> dict[str, str]:
    """{output of Transpose(E): E} for 2-D float initializers E (a tied head)."""
    out = {}
    for n in graph.node:
        perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), [1, 0])
        if n.op_type == "Transpose" and _float_2d(inits.get(n.input[0])) and perm == [1, 0]:
            out[n.output[0]] = n.input[0]
    return out


class _Rewriter:
    """The added initializers and nodes of one graph's rewrite."""

    def __init__(self, inits: dict):
        self.inits = inits
        self.added = [_const(P + "eps", np.float32(1e-8)), _const(P + "127", np.float32(127.0)),
                      _const(P + "last", np.array([-1], np.int64)),
                      _const(P + "zero", np.array([0], np.int64)),
                      _const(P + "zp", np.array([128], np.uint8)), _const(P + "zp0", np.uint8(128))]
        self.quantized_inputs: dict[str, str] = {}
        self.rows: dict[str, tuple[str, str]] = {}  # table -> (int8 rows, row scales)
        self.dropped: set[str] = set()

    def row_table(self, name: str) -> tuple[str, str]:
        """E (rows, cols) -> int8 E8 and per-row scales, made once per table."""
        if name not in self.rows:
            e = numpy_helper.to_array(self.inits[name]).astype(np.float32)
            amax = np.abs(e).max(axis=1)
            se = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
            q = name + "_q8row"
            self.added += [_const(q, np.clip(np.round(e / se[:, None]), -127, 127)
                                  .astype(np.int8)), _const(q + "_scale", se),
                           _const(q + "_n", np.array([e.shape[0]], np.int64))]
            self.rows[name] = (q, q + "_scale")
            self.dropped.add(name)
        return self.rows[name]

    def quantize_input(self, x: str) -> tuple[list[onnx.NodeProto], str]:
        """Nodes quantizing activation x per token (once per x), and their prefix."""
        if x in self.quantized_inputs:
            return [], self.quantized_inputs[x]
        p = f"{P}{len(self.quantized_inputs)}_"
        self.quantized_inputs[x] = p
        return [
            _node("Shape", [x], p + "shape"),
            _node("Slice", [p + "shape", P + "zero", P + "last"], p + "lead"),
            _node("Shape", [x], p + "k", start=-1),
            _node("Concat", [P + "last", p + "k"], p + "shape2d", axis=0),
            _node("Reshape", [x, p + "shape2d"], p + "x2d"),
            _node("Abs", [p + "x2d"], p + "abs"),
            _node("ReduceMax", [p + "abs", P + "last"], p + "amax", keepdims=0),
            _node("Max", [p + "amax", P + "eps"], p + "amax1"),
            _node("Div", [p + "amax1", P + "127"], p + "scale"),
            _node("Shape", [p + "scale"], p + "tokens"),
            _node("Expand", [P + "zp", p + "tokens"], p + "zps"),
            _node("QuantizeLinear", [p + "x2d", p + "scale", p + "zps"], p + "q", axis=0),
            _node("Unsqueeze", [p + "scale", P + "last"], p + "scale_col")], p

    def column_weight(self, wname: str) -> tuple[str, str, str]:
        """W (K, N) -> int8 W8, per-column scales and [N] (a plain weight)."""
        w = numpy_helper.to_array(self.inits[wname]).astype(np.float32)
        amax = np.abs(w).max(axis=0)
        sw = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        wq = wname + "_q8tok"
        self.added += [_const(wq, np.clip(np.round(w / sw), -127, 127).astype(np.int8)),
                       _const(wq + "_scale", sw), _const(wq + "_n", np.array([w.shape[1]],
                                                                             np.int64))]
        self.dropped.add(wname)
        return wq, wq + "_scale", wq + "_n"

    def matmul(self, n: onnx.NodeProto, tied: dict[str, str]) -> list[onnx.NodeProto]:
        x, wname = n.input
        nodes, p = self.quantize_input(x)
        y = n.output[0]
        if wname in tied:  # x @ E^T: E's int8 rows, transposed (folded at load)
            q, scale = self.row_table(tied[wname])
            nodes.append(_node("Transpose", [q], q + "_T", perm=[1, 0]))
            w8, n_out = q + "_T", q + "_n"
        else:
            w8, scale, n_out = self.column_weight(wname)
        return nodes + [
            _node("MatMulInteger", [p + "q", w8, P + "zp0"], y + "_i32"),
            _node("Cast", [y + "_i32"], y + "_f32", to=TensorProto.FLOAT),
            _node("Mul", [y + "_f32", p + "scale_col"], y + "_xs"),
            _node("Mul", [y + "_xs", scale], y + "_2d"),
            _node("Concat", [p + "lead", n_out], y + "_shape", axis=0),
            helper.make_node("Reshape", [y + "_2d", y + "_shape"], [y], name=y + "_Reshape")]

    def gather(self, n: onnx.NodeProto) -> list[onnx.NodeProto]:
        q, scale = self.row_table(n.input[0])
        y, ids = n.output[0], n.input[1]
        return [_node("Gather", [q, ids], y + "_i8", axis=0),
                _node("Cast", [y + "_i8"], y + "_f32", to=TensorProto.FLOAT),
                _node("Gather", [scale, ids], y + "_s", axis=0),
                _node("Unsqueeze", [y + "_s", P + "last"], y + "_s1"),
                helper.make_node("Mul", [y + "_f32", y + "_s1"], [y], name=y + "_Mul")]


def _live(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """`nodes` without those whose outputs nothing uses (in order)."""
    need, keep = set(outputs), []
    for n in reversed(nodes):
        if any(o in need for o in n.output):
            keep.append(n)
            need.update(n.input)
    return keep[::-1]


def quantize_int8_per_token(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite `model` in place as the module docstring says; returns it."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 18:
        raise ValueError(f"int8 per-token quantization needs opset >= 18, got {opset}")
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    tied = _transposed_tables(graph, inits)
    r = _Rewriter(inits)
    nodes: list[onnx.NodeProto] = []
    for n in graph.node:
        axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
        if n.op_type == "MatMul" and len(n.input) == 2 and (
                _float_2d(inits.get(n.input[1])) or n.input[1] in tied):
            nodes += r.matmul(n, tied)
        elif n.op_type == "Gather" and axis == 0 and _float_2d(inits.get(n.input[0])):
            nodes += r.gather(n)
        else:
            nodes.append(n)
    nodes = _live(nodes, {o.name for o in graph.output})
    used = {i for n in nodes for i in n.input}
    keep = [i for i in graph.initializer if i.name not in r.dropped or i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep + r.added)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model
