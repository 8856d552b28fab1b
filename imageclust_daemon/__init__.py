"""imageclust-daemon: keeps a photo library organized by meaning."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("imageclust-daemon")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
