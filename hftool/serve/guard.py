"""The server's gate: the API key, the request-body cap, and the request counter and latency histogram."""

from __future__ import annotations

import hmac
import time

from fastapi.responses import Response

from hftool.serve.errors import error_response
from hftool.serve.metrics import Metrics


class Guard:
    """Pure ASGI middleware (streaming responses pass through untouched): the API key, the body-size cap,
    and the request counter and latency histogram. The key is compared in constant time and never logged; the
    ``Bearer`` scheme is matched in any case (RFC 7235: auth schemes are case-insensitive)."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int, metrics: Metrics):
        self.app, self.max_body_bytes, self.metrics = app, max_body_bytes, metrics
        self.expected = api_key.encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [500]
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope, path)
            if refusal is not None:
                return await refusal(scope, receive, send_status)
            return await self.app(scope, self._capped(receive), send_status)
        except _TooLarge:
            return await self._too_large()(scope, receive, send_status)
        finally:
            self.metrics.request_done(endpoint, status[0], time.perf_counter() - started)

    def _refusal(self, scope, path: str) -> Response | None:
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return self._too_large()
        if self.expected is not None and path != "/health":
            scheme, _, given = headers.get(b"authorization", b"").strip().partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.expected):
                return error_response(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                      "authentication_error", code="invalid_api_key")
        return None

    def _too_large(self) -> Response:
        return error_response(413, f"the request body is larger than this server's {self.max_body_bytes} "
                              "bytes", code="body_too_large")

    def _capped(self, receive):
        seen = [0]

        async def wrapped():
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > self.max_body_bytes:
                    raise _TooLarge()
            return message

        return wrapped


class _TooLarge(Exception):
    """A body without Content-Length grew past the cap while it was read."""


ENDPOINTS = {"/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/qa", "/health", "/metrics"}
