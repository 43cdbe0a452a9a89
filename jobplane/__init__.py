"""jobplane's user CLI and local stack (never deployed to Lambda)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("jobplane")
except PackageNotFoundError:  # a source tree on sys.path without `pip install`: no metadata to read
    __version__ = "0+unknown"
