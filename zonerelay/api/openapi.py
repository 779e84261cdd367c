"""GET /openapi.json: the API described in OpenAPI 3.0, kept beside the routes it describes."""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}
_ID = {"type": "string", "pattern": "^[0-9a-f]{18}$", "description": "queue id"}
_ADDR: dict[str, Any] = {
    "oneOf": [
        {"type": "string"},
        {
            "type": "object",
            "properties": {"name": {"type": "string"}, "address": {"type": "string"}},
            "required": ["address"],
            "additionalProperties": False,
        },
    ]
}
_ADDRS: dict[str, Any] = {"oneOf": [_ADDR, {"type": "array", "items": _ADDR}]}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "bad input",
        401: "missing or wrong credentials",
        404: "not found",
        413: "too large",
        503: "store or coordinator unavailable",
    }
    return {str(s): _json(_ERROR, text[s]) for s in statuses}


_ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_ZONE_PARAM = {"name": "zone", "in": "path", "required": True, "schema": {"type": "string"}}
_SELECTORS = [
    {"name": "zone", "in": "query", "schema": {"type": "string"}},
    {"name": "domain", "in": "query", "schema": {"type": "string"}},
]
_SUBMIT_HEADERS = [
    {"name": "X-Authenticated-User", "in": "header", "schema": {"type": "string"}},
    {"name": "X-Originating-IP", "in": "header", "schema": {"type": "string"}},
]
_QUEUED = _json(
    {
        "type": "object",
        "required": ["id", "from", "to", "response"],
        "properties": {
            "id": _ID,
            "from": {"type": "string"},
            "to": {"type": "array", "items": {"type": "string"}},
            "response": {"type": "string"},
            "suppressed": {"type": "array", "items": {"type": "string"}},
        },
    },
    "queued (suppressed recipients are listed and were not queued)",
)
_COUNTER = {
    "type": "object",
    "required": ["active", "deferred"],
    "properties": {
        "active": {"type": "object", "properties": {"rows": {"type": "integer"}}},
        "deferred": {"type": "object", "properties": {"rows": {"type": "integer"}}},
    },
}
_ENTRY = {
    "type": "object",
    "required": ["id"],
    "properties": {"id": {"type": "string"}, "address": {"type": "string"}, "domain": {"type": "string"}},
}
_UNTIL = {
    "until": {"type": "string", "format": "date-time", "description": "ISO-8601 UTC"},
    "until_epoch": {"type": "number", "description": "the same, unix seconds"},
}
_PARKED = {
    "type": "object",
    "required": ["key", "local_address", "mx", "until", "until_epoch", "reason"],
    "properties": {
        "key": {"type": "string", "description": "park:<local ip>:<mx host>"},
        "local_address": {"type": "string"},
        "mx": {"type": "string"},
        **_UNTIL,
        "reason": {"type": "string", "description": "the receiver's blocklist reply"},
    },
}
_SLOWED = {
    "type": "object",
    "required": ["key", "zone", "destination", "strikes", "paused", "reason"],
    "properties": {
        "key": {"type": "string", "description": "slow:<zone>:<destination>"},
        "zone": {"type": "string"},
        "destination": {"type": "string", "description": "a domain, or provider=<name> for an MX rollup"},
        "strikes": {"type": "integer", "description": "rate-limit episodes in a row; each doubles the pause"},
        "paused": {"type": "boolean", "description": "no new connection until paused_until"},
        "paused_until": {"type": "string", "format": "date-time"},
        "connections": {"type": "integer", "description": "connection cap while recovering"},
        "full_connections": {"type": "integer"},
        "gap": {"type": "number", "description": "seconds between new transactions while recovering"},
        "recovers": {"type": "string", "format": "date-time", "description": "full speed again"},
        "reason": {"type": "string", "description": "the receiver's rate-limit reply"},
    },
}
_KEY_PARAM = {
    "name": "key",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "the entry's key as listed (colons as they are, or as %3A)",
}
_ALL_PARAM = {"name": "all", "in": "query", "required": True, "schema": {"type": "string", "enum": ["true"]}}


def _listing(name: str, row: dict[str, Any]) -> dict[str, Any]:
    return _json(
        {"type": "object", "required": [name], "properties": {name: {"type": "array", "items": row}}}
    )


def _parking_paths(path: str, name: str, row: dict[str, Any], many: str, one: str) -> dict[str, Any]:
    cleared = _listing("cleared", {"type": "string", "description": "key of an entry removed"})
    return {
        path: {
            "get": {
                "summary": f"{many} in force",
                "responses": {"200": _listing(name, row), **_errors(401, 503)},
            },
            "delete": {
                "summary": f"Clear every {one} (all=true is required)",
                "parameters": [_ALL_PARAM],
                "responses": {"200": cleared, **_errors(400, 401, 503)},
            },
        },
        f"{path}/{{key}}": {
            "delete": {
                "summary": f"Clear one {one}",
                "parameters": [_KEY_PARAM],
                "responses": {"200": cleared, **_errors(400, 401, 404, 503)},
            }
        },
    }


SEND_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "from": _ADDR,
        "sender": _ADDR,
        "to": _ADDRS,
        "cc": _ADDRS,
        "bcc": _ADDRS,
        "replyTo": _ADDRS,
        "inReplyTo": {"type": "string"},
        "references": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "subject": {"type": "string"},
        "text": {"type": "string"},
        "html": {"type": "string"},
        "attachments": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "filename": {"type": "string"},
                    "content": {"type": "string", "description": "base64"},
                    "encoding": {"type": "string", "enum": ["base64"]},
                    "contentType": {"type": "string"},
                    "cid": {"type": "string"},
                    "contentDisposition": {"type": "string", "enum": ["attachment", "inline"]},
                },
            },
        },
        "headers": {
            "type": "object",
            "additionalProperties": {
                "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
            },
        },
        "envelope": {
            "type": "object",
            "additionalProperties": False,
            "required": ["to"],
            "properties": {
                "from": {"type": "string"},
                "to": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                "cc": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                "bcc": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            },
        },
        "messageId": {"type": "string"},
        "date": {"type": "string"},
        "list": {"type": "object"},
        "priority": {"type": "string", "enum": ["high", "normal", "low"]},
    },
}


def spec(max_size: int) -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "zonerelay HTTP API",
            "version": "1",
            "description": "ZoneMTA's HTTP API (same paths and response shapes) plus queue actions.",
        },
        "paths": {
            "/send": {
                "post": {
                    "summary": "Submit a message as Nodemailer JSON",
                    "parameters": _SUBMIT_HEADERS,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": SEND_SCHEMA}},
                    },
                    "responses": {"200": _QUEUED, **_errors(400, 401, 413, 503)},
                }
            },
            "/send-raw": {
                "post": {
                    "summary": f"Submit an RFC 5322 message (streamed, at most {max_size} bytes)",
                    "parameters": [
                        *_SUBMIT_HEADERS,
                        {"name": "from", "in": "query", "schema": {"type": "string"}},
                        {"name": "to", "in": "query", "schema": {"type": "string"}},
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"message/rfc822": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "responses": {"200": _QUEUED, **_errors(400, 401, 413, 503)},
                }
            },
            "/counter/zone/": {
                "get": {
                    "summary": "Queued and deferred rows of every zone",
                    "responses": {
                        "200": _json({"type": "object", "additionalProperties": _COUNTER}),
                        **_errors(401, 503),
                    },
                }
            },
            "/counter/zone/{zone}": {
                "get": {
                    "summary": "Queued and deferred rows of one zone",
                    "parameters": [_ZONE_PARAM],
                    "responses": {"200": _json(_COUNTER), **_errors(401, 404, 503)},
                }
            },
            "/queued/{kind}/{zone}": {
                "get": {
                    "summary": "First 1 000 queued (active) or deferred deliveries of a zone",
                    "parameters": [
                        {
                            "name": "kind",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "enum": ["active", "deferred"]},
                        },
                        _ZONE_PARAM,
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "list": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "properties": {
                                                "id": _ID,
                                                "seq": {"type": "string"},
                                                "zone": {"type": "string"},
                                                "recipient": {"type": "string"},
                                            },
                                        },
                                    }
                                },
                            }
                        ),
                        **_errors(401, 404, 503),
                    },
                }
            },
            "/queued/retry": {
                "post": {
                    "summary": "Make every pending delivery of a zone and/or recipient domain due now",
                    "parameters": _SELECTORS,
                    "responses": {
                        "200": _json({"type": "object", "properties": {"retried": {"type": "integer"}}}),
                        **_errors(400, 401, 404, 503),
                    },
                }
            },
            "/queued": {
                "delete": {
                    "summary": "Drop every pending delivery of a zone and/or recipient domain (no bounce)",
                    "parameters": _SELECTORS,
                    "responses": {
                        "200": _json({"type": "object", "properties": {"dropped": {"type": "integer"}}}),
                        **_errors(400, 401, 404, 503),
                    },
                }
            },
            "/message/{id}": {
                "get": {
                    "summary": "Metadata and the still pending recipients of a message",
                    "parameters": [_ID_PARAM],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["meta", "messages"],
                                "properties": {
                                    "meta": {"type": "object"},
                                    "messages": {"type": "array", "items": {"type": "object"}},
                                },
                            }
                        ),
                        **_errors(400, 401, 404, 503),
                    },
                },
                "delete": {
                    "summary": "Drop every pending delivery of a message (no bounce)",
                    "parameters": [_ID_PARAM],
                    "responses": {
                        "200": _json({"type": "object", "properties": {"dropped": {"type": "integer"}}}),
                        **_errors(400, 401, 404, 503),
                    },
                },
            },
            "/message/{id}/retry": {
                "post": {
                    "summary": "Try the pending deliveries of a message now",
                    "parameters": [_ID_PARAM],
                    "responses": {
                        "200": _json({"type": "object", "properties": {"retried": {"type": "integer"}}}),
                        **_errors(400, 401, 404, 503),
                    },
                }
            },
            "/fetch/{id}": {
                "get": {
                    "summary": "The stored message as message/rfc822 (no Received or DKIM-Signature)",
                    "parameters": [_ID_PARAM],
                    "responses": {
                        "200": {
                            "description": "the message",
                            "content": {"message/rfc822": {"schema": {"type": "string", "format": "binary"}}},
                        },
                        **_errors(400, 401, 404, 503),
                    },
                }
            },
            "/suppressionlist": {
                "get": {
                    "summary": "Suppressed addresses and domains",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {"suppressed": {"type": "array", "items": _ENTRY}},
                            }
                        ),
                        **_errors(401, 503),
                    },
                },
                "post": {
                    "summary": "Suppress an address or a domain",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "address": {"type": "string"},
                                        "domain": {"type": "string"},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json({"type": "object", "properties": {"suppressed": _ENTRY}}),
                        **_errors(400, 401, 503),
                    },
                },
                "delete": {
                    "summary": "Delete a suppression entry by id",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["id"],
                                    "properties": {"id": {"type": "string"}},
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json({"type": "object", "properties": {"deleted": {"type": "string"}}}),
                        **_errors(400, 401, 404, 503),
                    },
                },
            },
            **_parking_paths(
                "/blacklist", "blacklist", _PARKED, "Parked (local IP, MX host) pairs", "parked pair"
            ),
            **_parking_paths("/slowdowns", "slowdowns", _SLOWED, "Slowed-down destinations", "slow-down"),
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (zonemta_* names of the reference)",
                    "responses": {
                        "200": {
                            "description": "text exposition",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_errors(401, 503),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": _json({"type": "object"}), **_errors(401)},
                }
            },
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "code"],
                    "properties": {"error": {"type": "string"}, "code": {"type": "string"}},
                }
            }
        },
    }
