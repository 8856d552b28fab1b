"""Tiny ONNX models with the contract of a CLIP vision export, built at test time.

Real CLIP weights cannot be downloaded here, and a fake session would skip the
code that loads and checks a real file. These models go through ONNX Runtime
exactly as a real export does: same input and output names, same shapes, a
symbolic batch dimension, float32 throughout. Only what happens inside differs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# IR version 8 with opset 17: readable by every onnxruntime since 1.14, so the
# files do not depend on which onnx package wrote them (newer ones default to an
# IR version older runtimes refuse).
IR_VERSION = 8
OPSET = 17

IMAGE_SIZE = 224
_POOL = 56  # 224 / 56 = a 4x4 grid per channel: 3 * 4 * 4 = 48 features
_FEATURES = 3 * (IMAGE_SIZE // _POOL) ** 2


def build_tiny_clip(path: Path, dim: int = 32, seed: int = 0) -> Path:
    """Write a model `pixel_values` float32 [N,3,224,224] -> `image_embeds` float32 [N,dim].

    The graph is AveragePool(56, stride 56) -> Flatten -> MatMul with a fixed
    [48, dim] weight drawn from `seed`, so different images give different,
    deterministic embeddings, and the same arguments always give the same bytes
    (and so the same sha256).
    """
    weight = np.random.default_rng(seed).standard_normal((_FEATURES, dim)).astype(np.float32)
    graph = helper.make_graph(
        nodes=[
            helper.make_node(
                "AveragePool",
                ["pixel_values"],
                ["pooled"],
                kernel_shape=[_POOL, _POOL],
                strides=[_POOL, _POOL],
            ),
            helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
            helper.make_node("MatMul", ["features", "projection"], ["image_embeds"]),
        ],
        name="tiny_clip_vision",
        inputs=[
            helper.make_tensor_value_info(
                "pixel_values", TensorProto.FLOAT, ["batch", 3, IMAGE_SIZE, IMAGE_SIZE]
            )
        ],
        outputs=[helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch", dim])],
        initializer=[numpy_helper.from_array(weight, name="projection")],
    )
    model = helper.make_model(
        graph,
        producer_name="imageclust-tests",
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path
