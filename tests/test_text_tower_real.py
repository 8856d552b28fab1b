"""The text tower with CLIP's real architecture (random weights) through imageclust's own
text path: tokenizer, contract, embedding. Needs torch and transformers, which are not
test dependencies (a CPU torch is a large download): it runs where they are installed
(`pip install torch==2.13.0 transformers`) and is skipped elsewhere, CI included."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")


# torch's exporter warns about itself (the TorchScript exporter is deprecated; advanced
# indexing); those are PyTorch's notes about PyTorch, not about the file it writes.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_a_real_architecture_text_tower_embeds_as_pytorch_does(tmp_path: Path) -> None:
    from tests.tools.make_text_model import check, export

    path = export(tmp_path / "text.onnx")
    assert check(path) < 1e-4
