"""Nodemailer's message JSON (as ZoneMTA's POST /send takes it) turned into an RFC 5322 message.

Validated with pydantic first: unknown fields, wrong types, CR/LF in anything that becomes a
header, bad addresses and attachments from file paths or URLs are refused before a single
header is written. The MIME structure is built by the standard library (EmailMessage with
policy SMTP / SMTPUTF8), so encodings and folding are its, not ours.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import re
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parsedate_to_datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr, ValidationError, model_validator

from zonerelay.api.errors import ApiError
from zonerelay.smtp.grammar import parse_rcpt_to

#: Recipients of one API submission (the SMTP interfaces' default max_recipients).
MAX_RECIPIENTS = 1000
_HEADER_NAME = re.compile(r"[!-9;-~]{1,76}")
#: Headers the MIME structure owns; a caller setting them would break the message.
_STRUCTURAL = frozenset({"content-type", "content-transfer-encoding", "mime-version", "bcc"})


def valid_mailbox(address: str) -> bool:
    """An RFC 5321 mailbox (local@domain), the form SMTP itself would accept in RCPT TO."""
    if "@" not in address or len(address) > 320:
        return False
    try:
        parsed, params = parse_rcpt_to(f"TO:<{address}>")
    except Exception:
        return False
    return parsed == address and not params


def _no_newline(value: str) -> str:
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError("may not contain CR, LF or NUL (header injection)")
    return value


def _mailbox(value: str) -> str:
    value = _no_newline(value).strip()
    if not valid_mailbox(value):
        raise ValueError(f"{value!r} is not an email address")
    return value


Line = Annotated[StrictStr, AfterValidator(_no_newline)]
Mailbox = Annotated[StrictStr, AfterValidator(_mailbox)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class NamedAddress(_Model):
    name: Line = ""
    address: Mailbox


AddressInput = Line | NamedAddress
Addresses = AddressInput | list[AddressInput]


class Attachment(_Model):
    filename: Line | None = None
    content: StrictStr | None = None
    encoding: Literal["base64"] | None = None
    content_type: Line | None = Field(None, alias="contentType")
    cid: Line | None = None
    content_disposition: Literal["attachment", "inline"] | None = Field(None, alias="contentDisposition")
    path: Any = None
    href: Any = None

    @model_validator(mode="after")
    def _inline_only(self) -> Attachment:
        if self.path is not None or self.href is not None:
            raise ValueError("attachments from a file path or a URL are refused; send base64 content")
        if self.content is None:
            raise ValueError("an attachment needs base64 content")
        if self.content_type is not None and not re.fullmatch(r"[\w.+-]+/[\w.+-]+", self.content_type):
            raise ValueError(f"{self.content_type!r} is not a content type")
        return self

    def data(self) -> bytes:
        assert self.content is not None
        try:
            return base64.b64decode(self.content, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("attachment content is not valid base64") from None


class Envelope(_Model):
    from_: Annotated[StrictStr, AfterValidator(_no_newline)] = Field("", alias="from")
    to: Mailbox | list[Mailbox]
    cc: Mailbox | list[Mailbox] | None = None
    bcc: Mailbox | list[Mailbox] | None = None

    @model_validator(mode="after")
    def _sender(self) -> Envelope:
        if self.from_ and not valid_mailbox(self.from_):
            raise ValueError(f"envelope from {self.from_!r} is not an email address")
        return self


class ListUrl(_Model):
    url: Line
    comment: Line | None = None


ListValue = Line | ListUrl | list[Line | ListUrl]


class SendRequest(_Model):
    from_: AddressInput | None = Field(None, alias="from")
    sender: AddressInput | None = None
    to: Addresses | None = None
    cc: Addresses | None = None
    bcc: Addresses | None = None
    reply_to: Addresses | None = Field(None, alias="replyTo")
    in_reply_to: Line | None = Field(None, alias="inReplyTo")
    references: Line | list[Line] | None = None
    subject: Line | None = None
    text: StrictStr | None = None
    html: StrictStr | None = None
    attachments: list[Attachment] = Field(default_factory=list)
    headers: dict[str, Line | list[Line]] = Field(default_factory=dict)
    envelope: Envelope | None = None
    message_id: Line | None = Field(None, alias="messageId")
    date: Line | None = None
    list_: dict[str, ListValue] | None = Field(None, alias="list")
    priority: Literal["high", "normal", "low"] | None = None


class Composed:
    """The message bytes (CRLF) and the envelope taken from the JSON."""

    def __init__(self, raw: bytes, sender: str, recipients: list[str], smtputf8: bool) -> None:
        self.raw = raw
        self.sender = sender
        self.recipients = recipients
        self.smtputf8 = smtputf8
        self.body8bit = not raw.isascii()


def parse_request(data: Any) -> SendRequest:
    try:
        return SendRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ApiError(400, "invalid_field", f"{where}: {first['msg']}", field=where) from None


def _addresses(value: Addresses | None, field: str) -> list[tuple[str, str]]:
    """(display name, mailbox) pairs; a string may hold several, "Name <a@b>, c@d"."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    out: list[tuple[str, str]] = []
    for item in items:
        if isinstance(item, NamedAddress):
            out.append((item.name, item.address))
            continue
        for name, addr in _split_addresses(item):
            if not valid_mailbox(addr):
                raise ApiError(400, "invalid_address", f"{field}: {addr or item!r} is not an email address")
            out.append((name, addr))
    return out


def _split_addresses(text: str) -> list[tuple[str, str]]:
    from email.utils import getaddresses

    pairs = getaddresses([text])
    if not pairs or any(not addr for _, addr in pairs):
        raise ApiError(400, "invalid_address", f"{text!r} is not a list of email addresses")
    return pairs


def _header_address(pairs: list[tuple[str, str]]) -> list[Address]:
    out = []
    for name, addr in pairs:
        local, _, domain = addr.rpartition("@")
        try:
            out.append(Address(display_name=name, username=local, domain=domain))
        except (ValueError, IndexError) as exc:
            raise ApiError(400, "invalid_address", f"{addr!r}: {exc}") from None
    return out


def _list_header(value: ListValue) -> str:
    items = value if isinstance(value, list) else [value]
    parts = []
    for item in items:
        url, comment = (item.url, item.comment) if isinstance(item, ListUrl) else (item, None)
        url = url.strip()
        if "@" in url and ":" not in url:
            url = "mailto:" + url
        parts.append(f"<{url}>" + (f" ({comment})" if comment else ""))
    return ", ".join(parts)


def _date(value: str) -> str:
    try:
        dt = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ApiError(
                400, "invalid_field", f"date: {value!r} is not an RFC 5322 or ISO 8601 date"
            ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return format_datetime(dt)


def compose(req: SendRequest, hostname: str) -> Composed:
    """Build the message; raises ApiError for anything that cannot be sent as asked."""
    from_ = _addresses(req.from_, "from")
    to, cc, bcc = _addresses(req.to, "to"), _addresses(req.cc, "cc"), _addresses(req.bcc, "bcc")
    if req.envelope is not None:
        env = req.envelope
        sender = env.from_ or (from_[0][1] if from_ else "")
        recipients = [*_as_list(env.to), *_as_list(env.cc), *_as_list(env.bcc)]
    else:
        sender = from_[0][1] if from_ else ""
        recipients = [addr for _, addr in (*to, *cc, *bcc)]
    if not from_ and not sender:
        raise ApiError(400, "missing_from", "from is required")
    recipients = list(dict.fromkeys(recipients))
    if not recipients:
        raise ApiError(400, "missing_recipients", "at least one of to, cc, bcc (or envelope.to) is required")
    if len(recipients) > MAX_RECIPIENTS:
        raise ApiError(400, "too_many_recipients", f"at most {MAX_RECIPIENTS} recipients per message")
    all_pairs = [
        *from_,
        *to,
        *cc,
        *bcc,
        *_addresses(req.reply_to, "replyTo"),
        *_addresses(req.sender, "sender"),
    ]
    smtputf8 = not all(a.isascii() for a in [sender, *recipients, *(p[1] for p in all_pairs)])
    policy = email.policy.SMTPUTF8 if smtputf8 else email.policy.SMTP
    msg = EmailMessage(policy=policy)
    try:
        _fill(msg, req, hostname, from_, to, cc)
        raw = msg.as_bytes(policy=policy)
    except ApiError:
        raise
    except (ValueError, TypeError, LookupError) as exc:
        raise ApiError(400, "invalid_message", f"cannot build the message: {exc}") from None
    return Composed(raw, sender, recipients, smtputf8)


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _fill(
    msg: EmailMessage,
    req: SendRequest,
    hostname: str,
    from_: list[tuple[str, str]],
    to: list[tuple[str, str]],
    cc: list[tuple[str, str]],
) -> None:
    if from_:
        msg["From"] = _header_address(from_)
    if req.sender is not None:
        msg["Sender"] = _header_address(_addresses(req.sender, "sender"))
    if to:
        msg["To"] = _header_address(to)
    if cc:
        msg["Cc"] = _header_address(cc)
    if req.reply_to is not None:
        msg["Reply-To"] = _header_address(_addresses(req.reply_to, "replyTo"))
    if req.subject is not None:
        msg["Subject"] = req.subject
    msg["Message-ID"] = _msgid(req.message_id) if req.message_id else make_msgid(domain=hostname)
    if req.date is not None:
        msg["Date"] = _date(req.date)
    if req.in_reply_to:
        msg["In-Reply-To"] = _msgid(req.in_reply_to)
    if req.references:
        refs = req.references if isinstance(req.references, list) else req.references.split()
        msg["References"] = " ".join(_msgid(r) for r in refs)
    if req.priority in ("high", "low"):
        msg["X-Priority"] = "1 (Highest)" if req.priority == "high" else "5 (Lowest)"
        msg["Importance"] = "High" if req.priority == "high" else "Low"
    for key, value in (req.list_ or {}).items():
        if not re.fullmatch(r"[A-Za-z-]{1,40}", key):
            raise ApiError(400, "invalid_field", f"list.{key}: not a List-* header name")
        name = "List-ID" if key.lower() == "id" else "List-" + key[:1].upper() + key[1:]
        msg[name] = _list_header(value)
    for name, values in req.headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ApiError(400, "invalid_header", f"headers: {name!r} is not a header name")
        if name.lower() in _STRUCTURAL:
            raise ApiError(400, "invalid_header", f"headers: {name} is set by the MIME structure")
        for value in values if isinstance(values, list) else [values]:
            if name in msg and name.lower() in (
                "from",
                "to",
                "cc",
                "subject",
                "message-id",
                "date",
                "sender",
            ):
                del msg[name]
            msg[name] = value
    _content(msg, req)


def _msgid(value: str) -> str:
    value = value.strip()
    inner = value[1:-1] if value.startswith("<") and value.endswith(">") else value
    if not re.fullmatch(r"[!-;=?-~]+@[!-;=?-~]+", inner) or "<" in inner or ">" in inner:
        raise ApiError(400, "invalid_field", f"{value!r} is not a message id")
    return f"<{inner}>"


def _content(msg: EmailMessage, req: SendRequest) -> None:
    text, html = req.text, req.html
    if html is not None and text is not None:
        msg.set_content(text)
        msg.add_alternative(html, subtype="html")
    elif html is not None:
        msg.set_content(html, subtype="html")
    else:
        msg.set_content(text or "")
    for n, att in enumerate(req.attachments, start=1):
        try:
            data = att.data()
        except ValueError as exc:
            raise ApiError(400, "invalid_attachment", f"attachments.{n - 1}: {exc}") from None
        maintype, _, subtype = (att.content_type or "application/octet-stream").partition("/")
        headers = [f"Content-ID: <{att.cid.strip('<>')}>"] if att.cid else None
        msg.add_attachment(
            data,
            maintype=maintype,
            subtype=subtype,
            filename=att.filename or f"attachment-{n}",
            disposition=att.content_disposition or ("inline" if att.cid else "attachment"),
            headers=headers,
        )
