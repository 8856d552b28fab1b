"""imageclust-daemon: keeps a photo library organized by meaning."""

import os
from importlib.metadata import PackageNotFoundError, version

# ONNX Runtime's official Linux and macOS builds (1.29 on) keep a device id and a
# queue of usage events under ~/.cache/Microsoft/DeveloperTools and upload them to
# Microsoft. A photo organizer that stays on your machine turns that off, before
# anything imports onnxruntime (it reads this at start-up). Set it to 0 to opt in.
if not os.environ.get("ORT_DISABLE_TELEMETRY"):
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"

try:
    __version__ = version("imageclust-daemon")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
