"""Dev-only: an ONNX CLIP vision model with the real ViT-B/32 (or ViT-L/14) architecture
and random weights, for throughput benchmarks (real weights cannot be downloaded here).

    pip install torch==2.13.0   # CPU build; not a dependency of imageclust
    python tests/tools/make_vit_model.py OUT.onnx [--arch b32|l14] [--int8 OUT-int8.onnx]

Same contract as the published exports: input `pixel_values` float32 [N,3,224,224],
output `image_embeds` float32 [N,D]; the same cost, since cost does not depend on
the weights' values.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # see imageclust_daemon/__init__.py

ARCHS = {
    # hidden, intermediate, layers, heads, patch, projection
    "b32": (768, 3072, 12, 12, 32, 512),
    "l14": (1024, 4096, 24, 16, 14, 768),
}


def export(out: Path, arch: str) -> Path:
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    hidden, inter, layers, heads, patch, proj = ARCHS[arch]
    config = CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=224,
        patch_size=patch,
        projection_dim=proj,
    )
    torch.manual_seed(0)
    model = CLIPVisionModelWithProjection(config).eval()

    class ImageEmbeds(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.model(pixel_values=pixel_values).image_embeds

    return export_image_model(ImageEmbeds(), out)


def export_image_model(module: Any, out: Path) -> Path:
    """Write `module` as ONNX with the CLIP vision export's contract:
    `pixel_values` float32 [N,3,224,224] -> `image_embeds` float32 [N,D]."""
    import torch

    with torch.no_grad():
        torch.onnx.export(
            module.eval(),
            (torch.zeros(1, 3, 224, 224),),
            str(out),
            input_names=["pixel_values"],
            output_names=["image_embeds"],
            dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return out


def quantize(source: Path, out: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--arch", choices=sorted(ARCHS), default="b32")
    p.add_argument("--int8", type=Path, help="also write a dynamically quantized int8 copy")
    args = p.parse_args()
    export(args.out, args.arch)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.0f} MB)")
    if args.int8:
        quantize(args.out, args.int8)
        print(f"wrote {args.int8} ({args.int8.stat().st_size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
