"""Indexing: what is under the roots (scan, watch, presence), reading a photo (decode,
camera RAW, EXIF, preprocessing), the pipeline that embeds it into the store, and its
Dask reader."""
