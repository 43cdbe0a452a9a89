"""Google SDK errors are translated once, by gcp/errors.py's table, with the provider's words kept."""

from __future__ import annotations

import pytest
from google.api_core import exceptions as g
from google.auth import exceptions as auth

from chalicelib.backends.gcp import base, errors
from chalicelib.backends.gcp.errors import TABLE, map_gcp_errors, translate
from chalicelib.errors import (
    BackendAuthError,
    BackendError,
    BackendValidationError,
    CapacityError,
    QuotaError,
    ThrottledError,
)


@pytest.mark.parametrize(
    ("exc", "kind", "retryable"),
    [
        (g.ServiceUnavailable("The zone does not have enough resources available"), CapacityError, True),
        (g.BadRequest("ZONE_RESOURCE_POOL_EXHAUSTED"), CapacityError, True),
        (g.Forbidden("Quota 'GPUS_ALL_REGIONS' exceeded. Limit: 0.0 globally."), QuotaError, False),
        (
            g.ResourceExhausted("Quota exceeded for aiplatform.googleapis.com/custom_model_training_cpus"),
            QuotaError,
            False,
        ),
        (g.TooManyRequests("slow down"), ThrottledError, True),
        (g.BadRequest("RATE_LIMIT_EXCEEDED"), ThrottledError, True),
        (g.Unauthenticated("invalid credentials"), BackendAuthError, False),
        (g.PermissionDenied("Permission 'aiplatform.customJobs.create' denied"), BackendAuthError, False),
        (g.FailedPrecondition("the service account does not exist"), BackendValidationError, False),
        (g.OutOfRange("replica count"), BackendValidationError, False),
        (g.DeadlineExceeded("deadline"), BackendError, True),
        (g.Aborted("concurrent modification"), BackendError, True),
        (g.Conflict("already exists"), BackendError, False),
        (auth.RefreshError("token expired"), BackendAuthError, False),
        (ConnectionRefusedError("refused"), BackendError, True),
        (RuntimeError("surprise"), BackendError, False),
    ],
)
def test_each_google_error_maps_to_one_jobplane_error(exc, kind, retryable):
    err = translate(exc, "creating custom job jp-x")
    assert (type(err), err.retryable) == (kind, retryable)
    assert err.message.startswith("creating custom job jp-x: ")


def test_the_error_info_reason_counts_as_much_as_the_message():
    class WithReason(g.Forbidden):
        reason = "QUOTA_EXCEEDED"

    assert type(translate(WithReason("denied"), "x")) is QuotaError
    assert type(translate(g.Forbidden("denied"), "x")) is BackendAuthError


def test_every_row_of_the_table_names_a_google_exception():
    assert all(issubclass(getattr(g, cls), g.GoogleAPICallError) for cls, *_ in TABLE)


def test_the_context_manager_translates_chains_and_leaves_not_found_alone():
    with pytest.raises(ThrottledError) as info, map_gcp_errors("listing instances"):
        raise g.TooManyRequests("Rate Limit Exceeded")
    assert isinstance(info.value.__cause__, g.TooManyRequests)
    assert info.value.message == "listing instances: Rate Limit Exceeded"
    with pytest.raises(g.NotFound), map_gcp_errors("getting instance"):
        raise g.NotFound("gone")
    with pytest.raises(KeyError), map_gcp_errors("parsing"):
        raise KeyError("not a Google error")


def test_base_keeps_the_names_the_backends_import():
    assert base.translate is errors.translate and base.map_gcp_errors is errors.map_gcp_errors
