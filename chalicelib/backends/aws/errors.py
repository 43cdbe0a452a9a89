"""botocore errors -> jobplane's hierarchy, in one table, for every AWS backend."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from chalicelib.errors import (
    BackendAuthError,
    BackendError,
    BackendValidationError,
    CapacityError,
    QuotaError,
    ThrottledError,
)

# Error codes, as the AWS APIs jobplane calls spell them (EC2, SageMaker, Batch, ECS, S3).
CAPACITY = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientHostCapacity",
        "InsufficientReservedInstanceCapacity",
        "InsufficientCapacity",
        "CapacityError",
        "SpotMaxPriceTooLow",
        "InsufficientFreeAddressesInSubnet",
        "Unsupported",  # EC2: the instance type is not offered in this zone right now
    }
)
QUOTA = frozenset(
    {
        "ResourceLimitExceeded",
        "VcpuLimitExceeded",
        "InstanceLimitExceeded",
        "MaxSpotInstanceCountExceeded",
        "ServiceQuotaExceededException",
        "LimitExceededException",
        "PendingVerification",  # a new account's instance launches are held back
    }
)
AUTH = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "ExpiredToken",
        "ExpiredTokenException",
        "AuthFailure",
        "SignatureDoesNotMatch",
        "Blocked",
        "OptInRequired",
    }
)
THROTTLING = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "SlowDown",
        "PriorRequestNotComplete",
    }
)
VALIDATION = frozenset(
    {
        "ValidationException",
        "ValidationError",
        "InvalidParameter",
        "InvalidParameterValue",
        "InvalidParameterCombination",
        "InvalidParameterException",
        "MissingParameter",
        "ClientException",
        "InvalidAMIID.NotFound",
        "InvalidAMIID.Malformed",
        "InvalidLaunchTemplateId.NotFound",
        "InvalidLaunchTemplateName.NotFoundException",
        "InvalidSubnetID.NotFound",
        "InvalidGroup.NotFound",
        "InvalidInstanceType",
        "InvalidUserData.Malformed",
        "NoSuchBucket",
    }
)
# ClientException / ValidationException bodies that are really about capacity or quota.
_QUOTA_WORDS = ("limit exceeded", "quota", "resourcelimitexceeded", "vcpulimitexceeded")
_CAPACITY_WORDS = ("insufficient capacity", "insufficientinstancecapacity", "capacity not available")


def translate(exc: Exception, service: str, operation: str) -> BackendError:
    """The jobplane error for one SDK exception; the provider's code and message stay in the message."""
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        NoCredentialsError,
        ParamValidationError,
    )

    if isinstance(exc, ClientError):
        error = exc.response.get("Error") or {}
        code = str(error.get("Code") or "Unknown")
        text = str(error.get("Message") or "").strip()
        status = int((exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
        message = f"{service} {operation}: {code}: {text}" if text else f"{service} {operation}: {code}"
        lowered = text.lower()
        if code in THROTTLING:
            return ThrottledError(message)
        if code in CAPACITY or any(w in lowered for w in _CAPACITY_WORDS):
            return CapacityError(message, retryable=True)
        if code in QUOTA or any(w in lowered for w in _QUOTA_WORDS):
            return QuotaError(message)
        if code in AUTH or status == 403:
            return BackendAuthError(message)
        if code in VALIDATION or code.startswith("Invalid") or (400 <= status < 500 and status != 429):
            return BackendValidationError(message)
        if status == 429:
            return ThrottledError(message)
        return BackendError(message, retryable=status >= 500 or status == 0)
    if isinstance(exc, NoCredentialsError):
        return BackendAuthError(f"{service} {operation}: no AWS credentials")
    if isinstance(exc, ParamValidationError):
        return BackendValidationError(f"{service} {operation}: {exc}")
    if isinstance(exc, ConnectionError):
        return BackendError(f"{service} {operation}: cannot reach the endpoint: {exc}", retryable=True)
    return BackendError(f"{service} {operation}: {type(exc).__name__}: {exc}")


@contextmanager
def aws_errors(service: str, operation: str) -> Iterator[None]:
    """Run one SDK call; any botocore error leaves as a jobplane BackendError subclass."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise translate(exc, service, operation) from exc


def error_code(exc: BaseException) -> str | None:
    """The AWS error code behind a translated error (or a ClientError), if any."""
    from botocore.exceptions import ClientError

    cause = exc if isinstance(exc, ClientError) else exc.__cause__
    if isinstance(cause, ClientError):
        return str((cause.response.get("Error") or {}).get("Code"))
    return None
