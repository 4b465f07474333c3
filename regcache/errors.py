"""The one error vocabulary of regcache.

`RegistryError` is what a client sees: a code from the distribution error table
(distribution `registry/api/errcode/register.go`, OCI distribution-spec "Error Codes")
with its HTTP status. Only `regcache.web.middleware` renders it.

`UpstreamError` and its subclasses are what the upstream client raises; `to_registry_error`
is the single mapping from an upstream outcome to what the client gets.
"""

from __future__ import annotations

from typing import Any

# code -> (HTTP status, default message)
ERROR_CODES: dict[str, tuple[int, str]] = {
    "BLOB_UNKNOWN": (404, "blob unknown to registry"),
    "BLOB_UPLOAD_UNKNOWN": (404, "blob upload unknown to registry"),
    "MANIFEST_UNKNOWN": (404, "manifest unknown"),
    "NAME_UNKNOWN": (404, "repository name not known to registry"),
    "NAME_INVALID": (400, "invalid repository name"),
    "TAG_INVALID": (400, "manifest tag did not match URI"),
    "DIGEST_INVALID": (400, "provided digest did not match uploaded content"),
    "MANIFEST_INVALID": (400, "manifest invalid"),
    "PAGINATION_NUMBER_INVALID": (400, "invalid number of results requested"),
    "RANGE_INVALID": (416, "invalid content range"),
    "UNSUPPORTED": (405, "The operation is unsupported."),
    "UNAUTHORIZED": (401, "authentication required"),
    "DENIED": (403, "requested access to the resource is denied"),
    "TOOMANYREQUESTS": (429, "too many requests"),
    "UNAVAILABLE": (503, "service unavailable"),
    "UNKNOWN": (500, "unknown error"),
}


class RegistryError(Exception):
    """An error answered to the client in the registry JSON error envelope."""

    def __init__(
        self,
        code: str,
        message: str | None = None,
        detail: Any = None,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        default_status, default_message = ERROR_CODES[code]
        self.code = code
        self.message = message or default_message
        self.detail = detail
        self.status = status or default_status
        self.headers = headers or {}
        super().__init__(f"{code}: {self.message}")

    def to_envelope(self) -> dict[str, Any]:
        """The body distribution's `errcode.ServeJSON` writes."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        return {"errors": [error]}


class UpstreamError(Exception):
    """Something went wrong talking to an upstream registry."""


class UpstreamNotFound(UpstreamError):
    """The upstream answered 404, or 401/403 for a repository we may not see."""


class UpstreamAuthError(UpstreamError):
    """The upstream refused our credentials (or the token server failed us)."""


class UpstreamRateLimited(UpstreamError):
    """The upstream answered 429; `retry_after` is passed on to the client."""

    def __init__(self, message: str, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamUnavailable(UpstreamError):
    """Connection refused, 5xx, an unparsable answer: upstream cannot serve now."""


class UpstreamTimeout(UpstreamUnavailable):
    """Connect or read timed out."""


class DigestMismatch(UpstreamError):
    """The bytes upstream sent do not hash to the digest asked for (or are the wrong size)."""


def to_registry_error(exc: UpstreamError, not_found_code: str = "NAME_UNKNOWN") -> RegistryError:
    """Map an upstream failure to the error a client gets (style.md C6).

    404 becomes the `not_found_code` of the resource (BLOB_UNKNOWN, MANIFEST_UNKNOWN, ...),
    so that dockerd and containerd fall back to the next host (wire-protocol.md 1.6, 2.3).
    Auth failures are ours, not the client's: they are reported as DENIED (403), never as a
    401 challenge, which would make dockerd send its Docker Hub credentials to us (1.5).
    """
    if isinstance(exc, UpstreamNotFound):
        return RegistryError(not_found_code, detail=str(exc) or None)
    if isinstance(exc, UpstreamAuthError):
        return RegistryError("DENIED", "upstream denied access")
    if isinstance(exc, UpstreamRateLimited):
        headers = {"Retry-After": exc.retry_after} if exc.retry_after else {}
        return RegistryError("TOOMANYREQUESTS", "upstream rate limit reached", headers=headers)
    if isinstance(exc, UpstreamTimeout):
        return RegistryError("UNAVAILABLE", "upstream timed out", status=504)
    if isinstance(exc, DigestMismatch):
        return RegistryError("UNAVAILABLE", "upstream sent content that failed verification", status=502)
    return RegistryError("UNAVAILABLE", f"upstream unavailable: {exc}", status=502)
