"""Storage trouble as the client sees it: 503 UNAVAILABLE with Retry-After, never a 500."""

from __future__ import annotations

import aiohttp
from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

from registry.oci.errors import UNAVAILABLE, RegistryError

RETRY_AFTER_SECONDS = 5
# Storage's own "busy, try again" answers: server errors, throttling, timeouts.
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
# The account is not what the deployment promised: a container or table missing, or the identity's
# role not (yet) granted. Role assignments take minutes to reach storage after a deployment.
_NOT_PROVISIONED = {"ContainerNotFound", "TableNotFound", "QueueNotFound", "AuthorizationPermissionMismatch"}


def unavailable(reason: str) -> RegistryError:
    return RegistryError(UNAVAILABLE, f"storage is unavailable: {reason}; retry later",
                         headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def storage_failure(error: BaseException) -> RegistryError | None:
    """The 503 for a storage failure worth retrying; None for anything else (a bug: 500)."""
    if isinstance(error, (ServiceRequestError, ServiceResponseError)):
        return unavailable(type(error).__name__)
    if isinstance(error, HttpResponseError) and error.status_code in _TRANSIENT_STATUS:
        return unavailable(f"HTTP {error.status_code}")
    code = getattr(error, "error_code", None)
    code = getattr(code, "value", code)  # the SDKs' error-code enums
    if isinstance(error, HttpResponseError) and code in _NOT_PROVISIONED:
        # The code goes to the log (routes.py logs every storage failure), not to the caller.
        return unavailable("the registry's storage is not provisioned or not yet authorized")
    if isinstance(error, (TimeoutError, aiohttp.ClientError, ConnectionError)):
        return unavailable(type(error).__name__)
    return None
