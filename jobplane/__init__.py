"""jobplane's Python SDK (`from jobplane import Client`), user CLI and local stack (never deployed to Lambda)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("jobplane")
except PackageNotFoundError:  # a source tree on sys.path without `pip install`: no metadata to read
    __version__ = "0+unknown"

_SDK = {"Client", "Job", "JobEvent", "JobPage", "LogChunk", "Artifact", "Artifacts", "DryRun", "Endpoint", "Token"}
_ERRORS = {
    "JobplaneError",
    "ConnectionFailed",
    "NotConfigured",
    "SpecError",
    "AmbiguousJob",
    "WaitTimeout",
    "APIError",
    "InvalidRequest",
    "Unauthenticated",
    "Forbidden",
    "NotFound",
    "Conflict",
    "PayloadTooLarge",
    "BackendFailed",
    "ServerError",
}
__all__ = sorted(_SDK | _ERRORS | {"__version__"})


def __getattr__(name: str):
    # Imported on first use: `jobplane.local` (the stack) and `jobplane --version` need no HTTP client.
    if name in _SDK:
        from jobplane import sdk

        return getattr(sdk, name)
    if name in _ERRORS:
        from jobplane import sdk_errors

        return getattr(sdk_errors, name)
    raise AttributeError(f"module 'jobplane' has no attribute {name!r}")
