"""AWS credentials for the Cloud Functions: AssumeRoleWithWebIdentity with the function's Google identity token."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime

from chalicelib.config import Settings
from chalicelib.errors import BackendAuthError

log = logging.getLogger("jobplane.gcp_auth")
# Refresh this long before expiry: botocore refreshes env credentials itself 15 min before (advisory)
# and refuses them 10 min before (mandatory), so jobplane must always be ahead of both.
REFRESH_MARGIN_SECONDS = 20 * 60
SESSION_SECONDS = 3600


@dataclass(frozen=True)
class AwsCredentials:
    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: datetime

    def env(self) -> dict[str, str]:
        """The standard variables every AWS SDK reads (botocore refreshes from them at expiry)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_SESSION_TOKEN": self.session_token,
            "AWS_CREDENTIAL_EXPIRATION": self.expiration.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


def metadata_identity_token(settings: Settings, timeout: float = 3.0) -> str:
    """A Google-signed ID token for the function's service account, audience = the AWS role's trust policy."""
    query = urllib.parse.urlencode({"audience": settings.aws_web_identity_audience, "format": "full"})
    url = f"http://{settings.gce_metadata_host}/computeMetadata/v1/instance/service-accounts/default/identity?{query}"
    request = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})  # noqa: S310 - fixed http URL
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.read().decode().strip()
    except OSError as exc:
        raise BackendAuthError(f"no Google identity token from the metadata server: {exc}") from exc


def session_name(settings: Settings) -> str:
    # RoleSessionName: [\w+=,.@-]{2,64}; it names the caller in CloudTrail.
    return re.sub(r"[^\w+=,.@-]", "-", f"jobplane-{settings.stage}-gcp")[:64]


class WebIdentityFederation:
    """Temporary AWS credentials for the role in settings.aws_role_arn, cached until near expiry."""

    def __init__(
        self,
        settings: Settings,
        sts_client=None,
        token_source: Callable[[], str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not settings.aws_role_arn:
            raise BackendAuthError("JOBPLANE_AWS_ROLE_ARN is not set: nothing to federate to")
        self.settings = settings
        self._sts = sts_client
        self._token_source = token_source or (lambda: metadata_identity_token(settings))
        self._clock = clock
        self._lock = threading.Lock()
        self._current: AwsCredentials | None = None

    @property
    def sts(self):
        if self._sts is None:
            import boto3
            from botocore import UNSIGNED
            from botocore.config import Config

            # AssumeRoleWithWebIdentity is called without AWS credentials: the token is the credential.
            self._sts = boto3.client(
                "sts",
                region_name=self.settings.region,
                endpoint_url=self.settings.aws_endpoint_url,
                config=Config(signature_version=UNSIGNED),
            )
        return self._sts

    def _fresh(self) -> bool:
        current = self._current
        return current is not None and current.expiration.timestamp() - self._clock() > REFRESH_MARGIN_SECONDS

    def credentials(self) -> AwsCredentials:
        with self._lock:
            if not self._fresh():
                self._current = self._assume()
            assert self._current is not None
            return self._current

    def _assume(self) -> AwsCredentials:
        from botocore.exceptions import BotoCoreError, ClientError

        token = self._token_source()
        try:
            response = self.sts.assume_role_with_web_identity(
                RoleArn=self.settings.aws_role_arn,
                RoleSessionName=session_name(self.settings),
                WebIdentityToken=token,
                DurationSeconds=SESSION_SECONDS,
            )
        except (ClientError, BotoCoreError) as exc:
            raise BackendAuthError(f"AssumeRoleWithWebIdentity for {self.settings.aws_role_arn} failed: {exc}") from exc
        c = response["Credentials"]
        expiration = c["Expiration"]
        if isinstance(expiration, str):
            expiration = datetime.fromisoformat(expiration.replace("Z", "+00:00"))
        log.info("assumed %s until %s", self.settings.aws_role_arn, expiration.isoformat())
        return AwsCredentials(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"], expiration)

    def export(self, environ: MutableMapping[str, str] | None = None) -> AwsCredentials:
        """Put fresh credentials where pynamodb's and boto3's default credential chain finds them."""
        credentials = self.credentials()
        target = os.environ if environ is None else environ
        target.update(credentials.env())
        return credentials
