"""OpenAI's error shape for every failure the server answers, from invalid JSON to a full queue.

Every error leaves as ``{"error": {message, type, param, code}}`` so client libraries raise their own exception
types; :func:`add_error_handlers` routes FastAPI's and Starlette's own errors into that shape too.
"""

from __future__ import annotations

import json

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from hftool.serve import schemas as s


class ApiError(Exception):
    """A request the server refuses; the handlers answer it in OpenAI's error shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}


def error_response(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = s.ErrorResponse(error=s.ErrorBody(message=message, type=kind, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def add_error_handlers(app: FastAPI) -> None:
    """Answer every exception a handler raises, or FastAPI raises for it, in OpenAI's error shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.kind, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        return validation_response(exc.errors())

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else exc.detail
        return error_response(exc.status_code, message, kind)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        return error_response(500, f"internal error: {type(exc).__name__}", "server_error")


def validation_response(errors) -> JSONResponse:
    """The first pydantic error as one OpenAI error naming its field (``messages.0.role``)."""
    error = errors[0]
    loc = [str(part) for part in error.get("loc", ()) if part != "body"]
    kind = error.get("type", "invalid")
    if kind == "json_invalid":
        return error_response(400, f"the request body is not valid JSON ({error.get('msg', '')})",
                              code="invalid_json")
    param = ".".join(loc) or None
    if kind == "extra_forbidden":
        message = f"unknown field '{param}'; remove it (see the OpenAI API reference for the fields)"
    elif kind == "missing":
        message = f"'{param}' is required"
    elif kind == "string_too_short" and error.get("input") == "":
        message = f"'{param}' is empty; give some text"
    else:
        shown = json.dumps(error.get("input"), default=str)[:80]
        why = error.get("msg", "invalid").removeprefix("Value error, ")
        message = f"'{param}' = {shown}: {why}" if param else why
    return error_response(400, message, param=param, code=kind)

