"""Helpers for testing and benchmarking use cases: small ONNX models built in code.

Like ``bytewax.testing``: small, real pieces for tests — the model is a genuine ONNX
graph that onnxruntime runs, built from seeded random weights in milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mlexec.errors import MlexecError

__all__ = ["make_linear", "make_mlp"]


def make_mlp(
    path: str | Path,
    inputs: int,
    hidden: Sequence[int] = (64, 64),
    outputs: int = 1,
    seed: int = 0,
    input_name: str = "x",
    output_name: str = "y",
) -> Path:
    """Write an MLP ``inputs → hidden… → outputs`` (ReLU; sigmoid output) to ``path``."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as exc:
        msg = "making a test model needs onnx: pip install 'mlexec[demo]'"
        raise MlexecError(msg) from exc
    rng = np.random.default_rng(seed)
    sizes = [inputs, *hidden, outputs]
    nodes, inits = [], []
    current = input_name
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        b = (rng.standard_normal(n_out) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = f"h{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [out]))
        current = out
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [current], [f"r{i}"]))
            current = f"r{i}"
    nodes.append(helper.make_node("Sigmoid", [current], [output_name]))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["n", inputs])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["n", outputs])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    target = Path(path)
    target.write_bytes(model.SerializeToString())
    return target


def make_linear(path: str | Path, weights: np.ndarray) -> Path:
    """Write ``y = x @ weights`` (float32, input ``x``, output ``y``) to ``path``.

    A pre-model for tests: its answer is one numpy product away.
    """
    try:
        from onnx import TensorProto, helper, save
    except ImportError as exc:
        msg = "making a test model needs onnx: pip install 'mlexec[demo]'"
        raise MlexecError(msg) from exc
    w = np.asarray(weights, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, w.shape[1]])],
        [helper.make_tensor("W", TensorProto.FLOAT, w.shape, w.flatten().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    target = Path(path)
    save(model, str(target))
    return target
