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


CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408  # CLIP's


def build_tiny_clip_text(
    path: Path, dim: int = 32, seed: int = 0, *, with_mask: bool = False, width: int = 8
) -> Path:
    """Write a model `input_ids` int64 [N,77] (and `attention_mask` with `with_mask`) ->
    `text_embeds` float32 [N,dim], the contract of a CLIP text export.

    Gather from a [49408, width] token table -> (times the mask) -> mean over the 77
    positions -> MatMul with a [width, dim] projection, all drawn from `seed`: different
    token ids give different, deterministic embeddings; same arguments, same bytes.
    """
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((VOCAB_SIZE, width)).astype(np.float32)
    projection = rng.standard_normal((width, dim)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["token_table", "input_ids"], ["tokens"], axis=0)]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", CONTEXT_LENGTH])
    ]
    pooled_from = "tokens"
    if with_mask:
        inputs.append(
            helper.make_tensor_value_info(
                "attention_mask", TensorProto.INT64, ["batch", CONTEXT_LENGTH]
            )
        )
        nodes += [
            helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["mask_f", "last_axis"], ["mask_3d"]),
            helper.make_node("Mul", ["tokens", "mask_3d"], ["masked"]),
        ]
        pooled_from = "masked"
    nodes += [
        helper.make_node("ReduceMean", [pooled_from], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "text_projection"], ["text_embeds"]),
    ]
    initializers = [
        numpy_helper.from_array(table, name="token_table"),
        numpy_helper.from_array(projection, name="text_projection"),
    ]
    if with_mask:
        initializers.append(numpy_helper.from_array(np.array([2], np.int64), name="last_axis"))
    graph = helper.make_graph(
        nodes=nodes,
        name="tiny_clip_text",
        inputs=inputs,
        outputs=[helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, ["batch", dim])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph, producer_name="imageclust-tests", opset_imports=[helper.make_opsetid("", OPSET)]
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path
