"""Dev-only: an ONNX CLIP text tower with the real ViT-B/32 text architecture and random
weights, the text side of `make_vit_model.py` (real weights cannot be downloaded here).

    pip install torch==2.13.0 transformers   # CPU build; not dependencies of imageclust
    python tests/tools/make_text_model.py OUT.onnx [--check]

`transformers.CLIPTextModelWithProjection` with `CLIPTextConfig`'s defaults, which are
ViT-B/32's text tower (vocabulary 49,408, width 512, 12 layers, 8 heads, 77
positions, projection 512). Same contract as the published exports: input
`input_ids` int64 [N,77], output `text_embeds` float32 [N,512]. `--check` runs the
file through imageclust's own text path (tokenizer, contract, embedding) and
compares with PyTorch's output for the same ids.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # see imageclust_daemon/__init__.py

CONTEXT_LENGTH = 77


def build(seed: int = 0) -> object:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    # eos_token_id: CLIP's end token, where the tower pools (transformers' own default
    # is 2, which makes it pool at the highest id instead: the same for CLIP's ids).
    config = CLIPTextConfig(eos_token_id=49407, bos_token_id=49406, pad_token_id=0)
    return CLIPTextModelWithProjection(config).eval()


def export(out: Path, seed: int = 0) -> Path:
    import torch

    model = build(seed)

    class TextEmbeds(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids).text_embeds

    ids = torch.zeros(2, CONTEXT_LENGTH, dtype=torch.int64)
    ids[:, 0], ids[:, 1] = 49406, 49407
    with torch.no_grad():
        torch.onnx.export(
            TextEmbeds().eval(),
            (ids,),
            str(out),
            input_names=["input_ids"],
            output_names=["text_embeds"],
            dynamic_axes={"input_ids": {0: "batch"}, "text_embeds": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return out


def check(path: Path, seed: int = 0) -> float:
    """Largest difference between imageclust's embedding of a few texts through `path` and
    PyTorch's, both L2-normalized."""
    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from imageclust_daemon.model.embed import TextEmbedder, open_session, text_model_io
    from imageclust_daemon.model.tokenizer import ClipTokenizer
    from tests.clip_vocab import write_tokenizer_json

    texts = ["a photo of a cat", "dog on the beach at sunset", "Zürich — 東京 🐶", ""]
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = ClipTokenizer.from_file(write_tokenizer_json(Path(tmp) / "t.json"))
    session = open_session(path, what="CLIP text model")
    io = text_model_io(session, path=str(path), context_length=CONTEXT_LENGTH, output_name=None)
    ids = tokenizer.encode_batch(texts)
    ours = TextEmbedder(session, io).embed(ids, tokenizer.end_id)
    with torch.no_grad():
        theirs = build(seed)(input_ids=torch.from_numpy(ids)).text_embeds.numpy()
    theirs = theirs / np.linalg.norm(theirs, axis=1, keepdims=True)
    return float(np.abs(ours - theirs).max())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    export(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.0f} MB)")
    if args.check:
        print(f"largest difference from PyTorch, normalized embeddings: {check(args.out):.2e}")


if __name__ == "__main__":
    main()
