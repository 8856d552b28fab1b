"""A model: its manifest entry, its files (download, checksums), its tokenizer, and the
ONNX Runtime sessions that embed photos and words."""
