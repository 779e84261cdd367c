"""Every failure leaves the API as JSON ``{"error": ..., "code": ...}`` with a 4xx/503 status.

Handlers raise ``ApiError``; the middleware also turns aiohttp's own HTTP errors (unknown
path, wrong method, body too large) and store or coordinator outages into that shape, and
logs anything unexpected instead of showing a traceback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from zonerelay.coord.base import CoordinationUnavailable
from zonerelay.store.base import StoreError, StoreUnavailable

__all__ = ["ApiError", "Handler", "Middleware", "error_middleware", "error_response"]

log = logging.getLogger("zonerelay.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """A refusal with its HTTP status, a stable machine-readable code and a human message."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, "code": code, **extra}, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, **exc.extra)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        response = error_response(exc.status, code, exc.reason)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except StoreUnavailable as exc:
        log.warning("api %s %s: %s", request.method, request.path, exc)
        return error_response(503, "store_unavailable", str(exc))
    except StoreError as exc:
        log.error("api %s %s: %s", request.method, request.path, exc)
        return error_response(503, "store_error", str(exc))
    except CoordinationUnavailable as exc:
        log.warning("api %s %s: %s", request.method, request.path, exc)
        return error_response(503, "coordination_unavailable", str(exc))
    except ConnectionResetError:
        raise
    except Exception:
        log.exception("api %s %s: unexpected failure", request.method, request.path)
        return error_response(500, "internal_error", "internal error; see the relay's log")


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong with it."""
    raw = await request.read()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return data
