"""Optional authentication for the whole API (``[api] auth``): the API reads every message."""

from __future__ import annotations

import base64
import binascii
import hmac

from aiohttp import web

from zonerelay.api.errors import Handler, Middleware, error_response


def auth_middleware(setting: str) -> Middleware | None:
    """A middleware enforcing ``"Bearer <token>"`` or ``"Basic <user>:<password>"``; None for ""."""
    if not setting:
        return None
    scheme, _, secret = setting.partition(" ")
    expected = secret.strip().encode()
    challenge = 'Bearer realm="zonerelay"' if scheme == "Bearer" else 'Basic realm="zonerelay"'

    def allowed(header: str) -> bool:
        given_scheme, _, value = header.partition(" ")
        if given_scheme.lower() != scheme.lower():
            return False
        if scheme == "Basic":
            try:
                given = base64.b64decode(value.strip(), validate=True)
            except (binascii.Error, ValueError):
                return False
        else:
            given = value.strip().encode("utf-8", "replace")
        return hmac.compare_digest(given, expected)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not allowed(request.headers.get("Authorization", "")):
            response = error_response(401, "unauthorized", "missing or wrong credentials")
            response.headers["WWW-Authenticate"] = challenge
            return response
        return await handler(request)

    return middleware
