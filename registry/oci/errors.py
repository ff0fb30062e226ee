"""The OCI Distribution error vocabulary, declared once; every layer raises these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ErrorCode:
    code: str
    status: int
    message: str


BLOB_UNKNOWN = ErrorCode("BLOB_UNKNOWN", 404, "blob unknown to registry")
BLOB_UPLOAD_INVALID = ErrorCode("BLOB_UPLOAD_INVALID", 400, "blob upload invalid")
BLOB_UPLOAD_UNKNOWN = ErrorCode("BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry")
DIGEST_INVALID = ErrorCode("DIGEST_INVALID", 400, "provided digest did not match uploaded content")
MANIFEST_BLOB_UNKNOWN = ErrorCode("MANIFEST_BLOB_UNKNOWN", 400, "manifest references a blob unknown to registry")
MANIFEST_INVALID = ErrorCode("MANIFEST_INVALID", 400, "manifest invalid")
MANIFEST_UNKNOWN = ErrorCode("MANIFEST_UNKNOWN", 404, "manifest unknown to registry")
NAME_INVALID = ErrorCode("NAME_INVALID", 400, "invalid repository name")
NAME_UNKNOWN = ErrorCode("NAME_UNKNOWN", 404, "repository name not known to registry")
SIZE_INVALID = ErrorCode("SIZE_INVALID", 400, "provided length did not match content length")
RANGE_INVALID = ErrorCode("BLOB_UPLOAD_INVALID", 416, "requested range not satisfiable")
UNAUTHORIZED = ErrorCode("UNAUTHORIZED", 401, "authentication required")
DENIED = ErrorCode("DENIED", 403, "requested access to the resource is denied")
TAG_INVALID = ErrorCode("TAG_INVALID", 400, "manifest tag did not match URI")
UNSUPPORTED_GRANT = ErrorCode("UNSUPPORTED", 400, "unsupported grant")
TOO_MANY_REQUESTS = ErrorCode("TOOMANYREQUESTS", 429, "too many requests")
UNKNOWN = ErrorCode("UNKNOWN", 500, "unknown error")
UNAVAILABLE = ErrorCode("UNAVAILABLE", 503, "service unavailable")
NOT_FOUND = ErrorCode("UNSUPPORTED", 404, "no such endpoint")
METHOD_NOT_ALLOWED = ErrorCode("UNSUPPORTED", 405, "method not allowed on this endpoint")
PAYLOAD_TOO_LARGE = ErrorCode("SIZE_INVALID", 413, "payload too large")
# A lock (ACR's changeable attributes) refuses the operation; ACR's wording, 405 as ACR answers.
LOCKED = ErrorCode("DENIED", 405, "The operation is disallowed on this registry, repository or image.")
PAGINATION_NUMBER_INVALID = ErrorCode("PAGINATION_NUMBER_INVALID", 400, "invalid number of results requested")
# The ACR metadata API (/acr/v1): a tag that is not there, and a query Berth will not answer.
TAG_UNKNOWN = ErrorCode("TAG_UNKNOWN", 404, "tag unknown to registry")
QUERY_UNSUPPORTED = ErrorCode("UNSUPPORTED", 400, "query not supported")
# Import from another registry: the target tag names other content (without Force, as ACR's
# NoForce mode refuses), the upstream failed or refused, an address the caller may not reach.
IMPORT_CONFLICT = ErrorCode("DENIED", 409, "the target tag exists and names other content")
UPSTREAM_FAILED = ErrorCode("UNKNOWN", 502, "the upstream registry failed")
UPSTREAM_FORBIDDEN = ErrorCode("DENIED", 403, "the upstream address may not be reached from here")


class RegistryError(Exception):
    """An error the client is told about, as an OCI error body."""

    def __init__(
        self,
        error: ErrorCode,
        message: str | None = None,
        detail: Any = None,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or error.message)
        self.error = error
        self.message = message or error.message
        self.detail = detail
        self.status = status or error.status
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"code": self.error.code, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return {"errors": [entry]}
