"""ONNX graph rewrites shared by the exporters (no torch, no ONNX Runtime session)."""

from __future__ import annotations

from typing import Any

import numpy as np


def gemm_to_matmul(model: Any) -> Any:
    """Rewrite ``Gemm`` nodes with a constant weight as ``MatMul`` + ``Add``.

    ONNX Runtime's dynamic quantizer handles MatMul but not Gemm, which is what
    the TorchScript exporter emits for ``nn.Linear``.
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type != "Gemm"
            or node.input[1] not in inits
            or attrs.get("transA", 0)
            or attrs.get("alpha", 1.0) != 1.0
            or attrs.get("beta", 1.0) != 1.0
        ):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            weight = weight.T
        weight_name = f"{node.input[1]}_matmul"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight), weight_name))
        if len(node.input) > 2 and node.input[2]:
            product = f"{node.output[0]}_matmul"
            nodes.append(
                helper.make_node(
                    "MatMul", [node.input[0], weight_name], [product], name=f"{node.name}_MatMul"
                )
            )
            nodes.append(
                helper.make_node(
                    "Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_Add"
                )
            )
        else:
            nodes.append(
                helper.make_node(
                    "MatMul",
                    [node.input[0], weight_name],
                    list(node.output),
                    name=f"{node.name}_MatMul",
                )
            )
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    onnx.checker.check_model(model)
    return model
