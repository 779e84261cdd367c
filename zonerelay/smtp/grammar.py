"""RFC 5321 / RFC 6531 grammar for the arguments of SMTP commands.

Pure functions over ``str`` (the command line decoded as UTF-8 with ``surrogateescape``, so bytes that
are not UTF-8 survive as lone surrogates, which no rule below matches).  Each regex sits beside the
ABNF it implements.  Errors say *which* part was wrong, so the caller can pick the reply: a bad path
is 501 5.1.7 / 5.1.3, bad parameters 501 5.5.4, a malformed command 501 5.5.4.
"""

from __future__ import annotations

import ipaddress
import re

from zonerelay.smtp import limits

__all__ = [
    "CommandSyntaxError",
    "GrammarError",
    "ParamSyntaxError",
    "PathSyntaxError",
    "is_valid_ehlo_name",
    "parse_mail_from",
    "parse_params",
    "parse_rcpt_to",
]


class GrammarError(ValueError):
    """Base class: the argument does not follow the grammar."""


class CommandSyntaxError(GrammarError):
    """The command's fixed parts are wrong (``MAIL FROM:`` missing, ...)."""


class PathSyntaxError(GrammarError):
    """The <path> is not a valid Reverse-path / Forward-path."""


class ParamSyntaxError(GrammarError):
    """The ESMTP parameters are malformed (not: unknown; that is the caller's policy)."""


# UTF8-non-ascii (RFC 6531 3.3), as decoded code points.  Surrogates are excluded on purpose: they are
# what undecodable bytes become, so a non-UTF-8 address never matches.
_U = "\u0080-\ud7ff\ue000-\U0010ffff"

# atext = ALPHA / DIGIT / "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "/" / "=" / "?" /
#         "^" / "_" / "`" / "{" / "|" / "}" / "~"                       (RFC 5322 3.2.3)
#       =/ UTF8-non-ascii                                               (RFC 6531 3.3)
_ATEXT = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~" + _U + "-]"
# Dot-string = Atom *("."  Atom) ; Atom = 1*atext
_DOT_STRING = f"{_ATEXT}+(?:\\.{_ATEXT}+)*"
# Quoted-string = DQUOTE *QcontentSMTP DQUOTE
# QcontentSMTP = qtextSMTP / quoted-pairSMTP
# qtextSMTP = %d32-33 / %d35-91 / %d93-126  =/ UTF8-non-ascii (RFC 6531)
# quoted-pairSMTP = %d92 %d32-126
_QUOTED_STRING = '"(?:[\\x20\\x21\\x23-\\x5b\\x5d-\\x7e' + _U + ']|\\\\[\\x20-\\x7e])*"'
# Local-part = Dot-string / Quoted-string
_LOCAL_PART = f"(?:{_DOT_STRING}|{_QUOTED_STRING})"
# sub-domain = Let-dig [Ldh-str] ; Ldh-str = *( ALPHA / DIGIT / "-" ) Let-dig
#            =/ U-label (RFC 6531 3.3)
# Written as "runs of let-dig separated by runs of hyphens" so the regex cannot backtrack badly.
_LET_DIG = "[A-Za-z0-9" + _U + "]"
_SUB_DOMAIN = f"{_LET_DIG}+(?:-+{_LET_DIG}+)*"
# Domain = sub-domain *("." sub-domain)
_DOMAIN = f"{_SUB_DOMAIN}(?:\\.{_SUB_DOMAIN})*"
# address-literal = "[" ( IPv4-address-literal / IPv6-address-literal / General-address-literal ) "]"
# dcontent = %d33-90 / %d94-126 ; the content is checked by _valid_address_literal
_ADDRESS_LITERAL = "\\[[\\x21-\\x5a\\x5e-\\x7e]+\\]"
# Mailbox = Local-part "@" ( Domain / address-literal )
_MAILBOX = f"(?P<local>{_LOCAL_PART})@(?P<domain>{_DOMAIN}|{_ADDRESS_LITERAL})"
# A-d-l = At-domain *( "," At-domain ) ; At-domain = "@" Domain   (source route: parsed, then ignored,
# as RFC 5321 4.1.1.3 and appendix C tell servers to do)
_ADL = f"@{_DOMAIN}(?:,@{_DOMAIN})*"
# Path = "<" [ A-d-l ":" ] Mailbox ">"
_PATH_RE = re.compile(f"<(?:{_ADL}:)?{_MAILBOX}>")
# Forward-path =/ "<Postmaster>" (case-insensitive, RFC 5321 4.1.1.3)
_POSTMASTER_RE = re.compile("<postmaster>", re.IGNORECASE)

# esmtp-param   = esmtp-keyword ["=" esmtp-value]
# esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
# esmtp-value   = 1*(%d33-60 / %d62-126)  =/ UTF8-non-ascii (RFC 6531 3.3)
_ESMTP_VALUE = "[\\x21-\\x3c\\x3e-\\x7e" + _U + "]+"
_PARAM_RE = re.compile(f"(?P<key>[A-Za-z0-9][A-Za-z0-9-]*)(?:=(?P<value>{_ESMTP_VALUE}))?")

# ehlo = "EHLO" SP ( Domain / address-literal ) CRLF.  Deliberately lenient: real clients send
# underscores, bare IPs and worse, and refusing them gains nothing; we only insist on one printable
# token without control characters (it ends up in Received headers).
_EHLO_NAME_RE = re.compile("[^\\x00-\\x20\\x7f\\ud800-\\udfff]+")


def is_valid_ehlo_name(name: str) -> bool:
    """True when ``name`` can be recorded as the client's EHLO/HELO name."""
    return _EHLO_NAME_RE.fullmatch(name) is not None


def parse_mail_from(argument: str) -> tuple[str, dict[str, str | None]]:
    """Parse what follows ``MAIL `` : ``FROM:<reverse-path> [SP Mail-parameters]``.

    Returns the address ("" for ``<>``) and the parameters.  A space after the colon is tolerated
    (RFC 5321 does not allow it, many clients send it).
    """
    rest = _strip_prefix(argument, "FROM:")
    if rest.startswith("<>"):
        address, tail = "", rest[2:]
    else:
        address, tail = _parse_path(rest)
    return address, parse_params(_param_text(tail))


def parse_rcpt_to(argument: str) -> tuple[str, dict[str, str | None]]:
    """Parse what follows ``RCPT `` : ``TO:<forward-path> [SP Rcpt-parameters]``.

    ``<Postmaster>`` without a domain is returned as ``"Postmaster"`` as the client spelled it.
    """
    rest = _strip_prefix(argument, "TO:")
    match = _POSTMASTER_RE.match(rest)
    if match:
        address, tail = rest[1 : match.end() - 1], rest[match.end() :]
    else:
        address, tail = _parse_path(rest)
    return address, parse_params(_param_text(tail))


def parse_params(text: str) -> dict[str, str | None]:
    """``Mail-parameters = esmtp-param *(SP esmtp-param)``; keys upper-cased, duplicates refused."""
    params: dict[str, str | None] = {}
    for token in text.split(" "):
        if not token:
            continue  # tolerate repeated spaces
        match = _PARAM_RE.fullmatch(token)
        if match is None:
            raise ParamSyntaxError(f"bad parameter {token!r}")
        key = match["key"].upper()
        if key in params:
            raise ParamSyntaxError(f"duplicate parameter {key}")
        params[key] = match["value"]
    return params


def _strip_prefix(argument: str, prefix: str) -> str:
    if argument[: len(prefix)].upper() != prefix:
        raise CommandSyntaxError(f"expected {prefix}")
    return argument[len(prefix) :].lstrip(" ")


def _param_text(tail: str) -> str:
    if tail and not tail.startswith(" "):
        raise PathSyntaxError("junk after the path")
    return tail


def _parse_path(text: str) -> tuple[str, str]:
    match = _PATH_RE.match(text)
    if match is None:
        raise PathSyntaxError("not a <path>")
    local, domain = match["local"], match["domain"]
    if domain.startswith("["):
        if not _valid_address_literal(domain[1:-1]):
            raise PathSyntaxError("bad address literal")
    elif len(domain) > limits.DOMAIN_MAX or max(map(len, domain.split("."))) > limits.DOMAIN_LABEL_MAX:
        raise PathSyntaxError("domain too long")
    return f"{local}@{domain}", text[match.end() :]


def _valid_address_literal(content: str) -> bool:
    """IPv4-address-literal / "IPv6:" IPv6-addr (RFC 5321 4.1.3).

    General-address-literal needs an IANA-registered tag and none is registered, so it is refused.
    """
    if "%" in content:  # ipaddress accepts IPv6 zone ids ("fe80::1%eth0"); RFC 5321 does not
        return False
    try:
        if content[:5].upper() == "IPV6:":
            ipaddress.IPv6Address(content[5:])
        else:
            ipaddress.IPv4Address(content)
    except ValueError:
        return False
    return True
