"""botocore errors are translated once, into the error hierarchy, with the provider's words kept."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from chalicelib.backends.aws.errors import translate
from chalicelib.errors import (
    BackendAuthError,
    BackendError,
    BackendValidationError,
    CapacityError,
    QuotaError,
    ThrottledError,
)


def client_error(code: str, message: str = "m", status: int = 400) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op"
    )


@pytest.mark.parametrize(
    ("code", "status", "kind", "retryable", "failure_kind"),
    [
        ("InsufficientInstanceCapacity", 500, CapacityError, True, "no_capacity"),
        ("SpotMaxPriceTooLow", 400, CapacityError, True, "no_capacity"),
        ("ResourceLimitExceeded", 400, QuotaError, False, "quota"),
        ("VcpuLimitExceeded", 400, QuotaError, False, "quota"),
        ("MaxSpotInstanceCountExceeded", 400, QuotaError, False, "quota"),
        ("AccessDeniedException", 400, BackendAuthError, False, "backend_error"),
        ("UnauthorizedOperation", 403, BackendAuthError, False, "backend_error"),
        ("ThrottlingException", 400, ThrottledError, True, "backend_error"),
        ("RequestLimitExceeded", 503, ThrottledError, True, "backend_error"),
        ("ValidationException", 400, BackendValidationError, False, "user_error"),
        ("InvalidAMIID.NotFound", 400, BackendValidationError, False, "user_error"),
        ("InternalFailure", 500, BackendError, True, "backend_error"),
    ],
)
def test_error_codes_map_to_the_hierarchy(code, status, kind, retryable, failure_kind):
    error = translate(client_error(code, "provider says no", status), "ec2", "RunInstances")
    assert type(error) is kind
    assert (error.retryable, error.failure_kind) == (retryable, failure_kind)
    assert error.message == f"ec2 RunInstances: {code}: provider says no"


def test_batch_client_exceptions_about_limits_are_quota_and_connection_failures_retry():
    quota = translate(client_error("ClientException", "vCPU limit exceeded for the account"), "batch", "SubmitJob")
    assert type(quota) is QuotaError
    down = translate(EndpointConnectionError(endpoint_url="http://x"), "sagemaker", "DescribeTrainingJob")
    assert type(down) is BackendError and down.retryable is True
