"""Classify a failed delivery attempt: what went wrong (category) and what to do (action).

Pure: a function of the reply (or failure) text, the rules and the labelled examples. The
rules are data (``rules.toml`` shipped with the package, plus the operator's
``[bounces] rules_file`` tried first). A reply that only a catch-all rule (``fallback = true``)
or no rule at all matches is read by a small model learned from the labelled replies shipped
in ``examples/`` (zonerelay.bounces.learned); without examples it falls back to the enhanced
status code (RFC 3463), then to the basic reply code. The action follows from the code and the
category, not from the rule alone, so that no rule can make a 4xx final.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

Category = Literal[
    "recipient",
    "mailbox_full",
    "greylist",
    "blacklist",
    "rate_limit",
    "spam",
    "virus",
    "auth",
    "policy",
    "size",
    "dns",
    "transient",
    "protocol",
    "other",
]
Action = Literal["reject", "defer"]

CATEGORIES: tuple[str, ...] = Category.__args__  # type: ignore[attr-defined]

#: 5xx categories that say nothing final about the message or the recipient: retry them.
DEFERRED_PERMANENT = frozenset({"blacklist", "rate_limit", "mailbox_full", "greylist"})

# "550-5.1.1 text" / "550 5.1.1 text" / "550 text" / "550; 5.7.515 text" (a Microsoft NDR) at the
# start of a line, maybe after "smtp;" or a Sendmail transcript's "<<< " or swaks' "<** "
_LINE = re.compile(
    r"^\s*(?:smtp;\s*|<<<\s*|<\*\*\s*)?([245]\d\d)(?:[ -]|[:;]\s?|$)"
    r"(?:\s*([245]\.\d{1,3}\.\d{1,3})\b)?\s?(.*)$"
)
# a reply reported by its enhanced status alone ("5.2.0 Email size exceeded ...", Microsoft's
# "5.7.1. Unable To Relay"), maybe on a line of its own after a client's words: no code
_STATUS_FIRST = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})\.?\s", re.MULTILINE)
_STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
# qmail's way: the text, then the enhanced status in a "(#5.1.2)" trailer, no code; Exchange's
# NDR puts it in "<server.example.com #5.1.1>"
_QMAIL_STATUS = re.compile(r"[(\s]#([245]\.\d{1,3}\.\d{1,3})[)>]")
# an MTA's report of the remote reply: Postfix "host mx.example.com[192.0.2.1] said: 550 5.1.1 ...",
# Exim "SMTP error from remote mail server after RCPT TO:<...>: 550 ..."
_QUOTED = re.compile(
    r"(?:\bsaid:|\bremote (?:mail )?server after [^:]+(?::<[^>]*>)?:)"
    r"\s*([245]\d\d)(?:[ -]|\n|$)(?:\s*([245]\.\d{1,3}\.\d{1,3})\b)?",
    re.IGNORECASE,
)
# a client's or MTA's own words around the remote reply, as its log or bounce gives them: msmtp
# "server message: 550 ...", dma "... failed after final DATA: 552 ...", Sendmail "reply=550-...",
# "(reason: 553 ...)", OpenSMTPD 'stat="550-..."', Courier/esmtp "<address>: 550 ...", a DSN's
# "Diagnostic-Code: smtp; 550 ...", Exim's "H=host [192.0.2.1] 535 ...", Python's smtplib
# exceptions "(550, b'5.1.1 ...')", sendEmail's "Received: \t550 ...", PEAR's "(code: 554,
# response: ...)", Exchange's "Remote Server returned '550 ...'", Swift Mailer's 'with message
# "550 ..."', Ruby's "Net::SMTPFatalError (555 ...", maddy's JSON '"smtp_code":556,', Stalwart's
# "rejected command 'RCPT TO:<...>' with code 550 (5.5.0) '...'", IONOS's "not reachable: '<address>'
# 550 ...", Haraka's DSN status "5.1.0 (450 ...)", tcllib's "diagnostic {...} args {} code 530",
# simplesmtp's "Invalid login - 535 ...", the npm sendmail package's "SMTP code:552 msg:..."
_EMBEDDED = re.compile(
    r"(?::[ \t]+|\breply=|\bstat=\"|\(reason: |\b(?i:smtp); ?|\] |\((?=\d{3}, b?['\"])|\breturned '"
    r"|\bmessage \"|Error \(|\"smtp_code\": ?|\bwith code |: '[^'\s]*' |^[245]\.\d{1,3}\.\d{1,3} \("
    r"|\bcode (?=\d{3}\W*$)|\bcode:| - (?=\d{3}\b))"
    r"([245]\d\d)(?:[ -]|$|, b?['\"]|,(?= response: )|,(?=\"))(?:\s*\(?([245]\.\d{1,3}\.\d{1,3})\b)?"
)
# the last resort, for wrappers no pattern above knows: a code followed by an enhanced status of
# its class anywhere ("... rejected: 550 5.1.1 ..."), or a code after the word "code" ("got code
# \"550\"", "code=554", "ERROR_CODE :550") or after a command's name ("SMTP error, DATA:554");
# each reads a reply in a new library's words rather than no reply at all
_ANY_PAIR = re.compile(r"(?<![\w./])([45]\d\d)[ -]\(?([45]\.\d{1,3}\.\d{1,3})\b")
_AFTER_CODE = re.compile(
    r"(?:(?:\b|(?<=_))code\b\s*[:=]?\s*[\"']?|\b(?:HELO|EHLO|MAIL|RCPT|DATA|DOT|BDAT|AUTH):)([45]\d\d)\b",
    re.IGNORECASE,
)
# qmail-send's log writes a remote reply with its spaces as underscores ("delivery 1: failure:
# 192.0.2.1_does_not_like_recipient./Remote_host_said:_550_No_such_user/Giving_up_on_...")
_QMAIL_LOG = re.compile(r"_does_not_like_(recipient|sender)|Remote_host_said:_")
# an enhanced status given without a code after a client's words ("failed after MAIL FROM: 5.7.0
# Authentication required", a DSN's "Status: 5.0.0", Sendmail's and Postfix's log "dsn=5.3.0,",
# MIME::Lite's "command failed: " and a new line, Net::SMTP's "Last server message was:5.3.4",
# Postfix's "milter-reject for END-OF-MESSAGE. 5.7.1 ...")
_STATUS_AFTER = re.compile(r"(?::\s*|\bdsn=|\.[ \t]+)([245]\.\d{1,3}\.\d{1,3})\b")
# an inline continuation "... 550-5.1.1 more text" inside one line (replies joined by a logger)
_INLINE = re.compile(r"\s\d{3}[ -](?:[245]\.\d{1,3}\.\d{1,3}\s)?")


#: only this much of a reply is read: the rules' searches cost up to quadratic time in the
#: text's length (a 200 KB reply of "limit limit ..." took 18 s), and what a reply says is
#: said in its first lines (the longest labelled reply is 665 characters)
MAX_CLASSIFIED = 4096


class RulesError(ValueError):
    """A rules file that cannot be used; the message names the rule."""


@dataclass(frozen=True, slots=True)
class Rule:
    category: str
    message: str
    pattern: re.Pattern[str] | None = None
    code: re.Pattern[str] | None = None
    status: re.Pattern[str] | None = None
    action: Action | None = None
    unless: re.Pattern[str] | None = None
    fallback: bool = False  # a catch-all: the learned model is asked before it

    def matches(self, text: str, code: int | None, status: str | None, lowered: str | None = None) -> bool:
        """``lowered`` is ``text.lower()``, passed by a caller that tries many rules on one text."""
        if self.code is not None and (code is None or not self.code.fullmatch(str(code))):
            return False
        if self.status is not None and (status is None or not self.status.fullmatch(status)):
            return False
        if lowered is None:
            lowered = text.lower()
        if self.unless is not None and _search(self.unless, text, lowered):
            return False
        return self.pattern is None or _search(self.pattern, text, lowered)


def _search(pattern: re.Pattern[str], text: str, lowered: str) -> bool:
    """A rule's pattern is case-insensitive: compiled for lowercased text (``_compile_text``), or
    with IGNORECASE over the text as it is when it asks for case somewhere (``(?-i:...)``)."""
    return pattern.search(text if pattern.flags & re.IGNORECASE else lowered) is not None


@dataclass(frozen=True, slots=True)
class Classification:
    category: str
    action: Action
    message: str
    code: int | None
    status: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "category": self.category,
            "message": self.message,
            "code": self.code,
            "status": self.status,
        }


@dataclass(frozen=True, slots=True)
class ParsedReply:
    code: int | None
    status: str | None
    text: str  # every line's text joined by spaces, without the code prefixes


@dataclass(frozen=True, slots=True)
class Match:
    """A reply read and matched against the rules, before anything is decided from it."""

    data: str  # the text classified (at most MAX_CLASSIFIED characters)
    reply: ParsedReply
    rule: Rule | None  # the first rule that matched
    needs_model: bool  # no rule or only a catch-all matched, and the learned model is on


def _readable(data: str) -> str:
    """``data`` with a qmail-send log's underscores back to spaces (see ``_QMAIL_LOG``)."""
    return data.replace("_", " ") if _QMAIL_LOG.search(data) else data


def _anywhere(data: str, status: str | None) -> tuple[int | None, str | None]:
    """The last resort's code and status, if the text has them (see ``_ANY_PAIR``)."""
    for pair in _ANY_PAIR.finditer(data):
        if pair.group(1)[0] == pair.group(2)[0]:
            return int(pair.group(1)), pair.group(2)
    if after := _AFTER_CODE.search(data):
        return int(after.group(1)), status
    return None, status


def parse_reply(data: str) -> ParsedReply:
    """Split a reply (one or several lines, or a failure message) into code, status and text."""
    data = _readable(data)
    code: int | None = None
    status: str | None = None
    parts: list[str] = []
    for raw in data.strip().splitlines():
        match = _LINE.match(raw)
        if match is None:
            parts.append(raw.strip())
            continue
        if code is None:
            code = int(match.group(1))
        if status is None and match.group(2) and match.group(2)[0] == match.group(1)[0]:
            status = match.group(2)
        parts.append(match.group(3).strip())
    text = " ".join(p for p in parts if p)
    if code is None and (quoted := _QUOTED.search(data) or _EMBEDDED.search(data)):
        code = int(quoted.group(1))
        if quoted.group(2) and quoted.group(2)[0] == quoted.group(1)[0]:
            status = quoted.group(2)
    if code is None:
        code, status = _anywhere(data, status)
    if code is None and (
        leading := _STATUS_FIRST.search(data) or _QMAIL_STATUS.search(data) or _STATUS_AFTER.search(data)
    ):
        status = leading.group(1)
    elif code is not None:
        text = _INLINE.sub(" ", " " + text).strip()
        if status is None:
            found = _STATUS.search(text)
            if found and found.group(1)[0] == str(code)[0]:
                status = found.group(1)
    return ParsedReply(code, status, text)


def _compile(value: Any, where: str, name: str, *, text: bool = False) -> re.Pattern[str] | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RulesError(f"{where}: {name} must be a string")
    try:
        as_written = re.compile(value, re.IGNORECASE)  # its errors name what was written
        return _compile_text(value, as_written) if text else as_written
    except re.error as exc:
        raise RulesError(f"{where}: bad {name} regular expression: {exc}") from None


def _compile_text(value: str, as_written: re.Pattern[str]) -> re.Pattern[str]:
    """A pattern over the reply text, to be searched in the lowercased text: its literal letters
    lowercased (escapes such as ``\\S`` kept) and compiled without IGNORECASE: Python's IGNORECASE
    matching made the shipped rules slower (finding the first rule took 1.95 ms a reply with it,
    1.13 ms without, over the 3 620 examples; every decision the same). A pattern that turns case
    back on (``(?-i:FOUND)``, ``(?s-i)``) keeps IGNORECASE and the text's case, as does one that
    names a character by its code or name (``\\x41``, ``\\N{...}``: it may be a capital)."""
    if _CASE_ON.search(value):
        return as_written
    folded, i = [], 0
    while i < len(value):
        step = 2 if value[i] == "\\" else 1
        folded.append(value[i : i + step] if step == 2 else value[i].lower())
        i += step
    return re.compile("".join(folded))


_CASE_ON = re.compile(r"\(\?[aiLmsux]*-[imsx]*i|\\[xuUN0-7]")


def parse_rules(data: dict[str, Any], source: str) -> tuple[Rule, ...]:
    """Rules from a parsed TOML document (``[[rule]]`` tables)."""
    rules = []
    for index, item in enumerate(data.get("rule", []), start=1):
        where = f"{source}: rule {index}"
        if not isinstance(item, dict):
            raise RulesError(f"{where}: expected a table")
        unknown = set(item) - {"category", "message", "pattern", "code", "status", "action", "unless",
                                "fallback"}
        if unknown:
            raise RulesError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        category = item.get("category")
        if category not in CATEGORIES:
            raise RulesError(f"{where}: category must be one of {', '.join(CATEGORIES)}")
        action = item.get("action")
        if action not in (None, "reject", "defer"):
            raise RulesError(f"{where}: action must be 'reject' or 'defer'")
        rule = Rule(
            category=category,
            message=str(item.get("message") or category),
            pattern=_compile(item.get("pattern"), where, "pattern", text=True),
            code=_compile(item.get("code"), where, "code"),
            status=_compile(item.get("status"), where, "status"),
            action=action,
            unless=_compile(item.get("unless"), where, "unless", text=True),
            fallback=bool(item.get("fallback", False)),
        )
        if rule.pattern is None and rule.code is None and rule.status is None:
            raise RulesError(f"{where}: needs a pattern, code or status")
        rules.append(rule)
    return tuple(rules)


def load_rules_file(path: Path) -> tuple[Rule, ...]:
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RulesError(f"{path}: {exc}") from None
    return parse_rules(data, str(path))


@lru_cache(maxsize=1)
def builtin_rules() -> tuple[Rule, ...]:
    text = resources.files("zonerelay.bounces").joinpath("rules.toml").read_text("utf-8")
    return parse_rules(tomllib.loads(text), "rules.toml")


# RFC 3463 subject.detail -> category, for replies no rule recognises
_BY_STATUS: dict[str, str] = {
    "1.1": "recipient", "1.2": "dns", "1.3": "recipient", "1.4": "recipient", "1.5": "recipient",
    "1.6": "recipient", "1.7": "policy", "1.8": "dns", "1.10": "dns",
    "2.1": "recipient", "2.2": "mailbox_full", "2.3": "size", "2.4": "other",
    "3.4": "size",
    "4.3": "dns", "4.4": "dns",
    "6.7": "protocol", "6.8": "protocol", "6.9": "protocol",
    "7.1": "policy", "7.8": "auth", "7.10": "policy", "7.11": "policy", "7.13": "recipient",
    "7.25": "policy", "7.27": "dns", "7.28": "rate_limit",
}  # fmt: skip
_BY_SUBJECT = {"1": "recipient", "2": "recipient", "3": "transient", "4": "transient", "5": "protocol",
               "6": "protocol", "7": "policy"}  # fmt: skip
_MESSAGES = {
    "recipient": "Unknown recipient", "mailbox_full": "Mailbox full", "greylist": "Greylisted",
    "blacklist": "Sending IP or domain is blocklisted", "rate_limit": "Rate limited",
    "spam": "Message judged as spam", "virus": "Suspicious attachment",
    "auth": "Sender authentication failed", "policy": "Refused by policy", "size": "Message too large",
    "dns": "Domain not found", "transient": "Temporary failure", "protocol": "Protocol error",
    "other": "Delivery failed",
}  # fmt: skip


def _fallback(code: int | None, status: str | None) -> str:
    if status is not None:
        _, subject, detail = status.split(".")
        category = _BY_STATUS.get(f"{int(subject)}.{int(detail)}") or _BY_SUBJECT.get(str(int(subject)))
        if category == "transient" and code is not None and code >= 500:
            return "other"  # a permanent "system/network problem" with nothing more said
        if category is not None:
            return category
    if code is None or code < 500:
        return "transient"  # no reply at all (connection failure, timeout) or a bare 4xx
    return {552: "size", 553: "recipient"}.get(code, "other")


def decide_action(
    category: str, code: int | None, rule_action: Action | None = None, status: str | None = None
) -> Action:
    """A 4xx (or no reply) is never final; some 5xx are retried anyway. Without a code, a
    permanent (5.x.x) enhanced status stands for a 5xx."""
    permanent = code >= 500 if code is not None else status is not None and status.startswith("5")
    if not permanent:
        return "defer"
    if rule_action is not None:
        return rule_action
    return "defer" if category in DEFERRED_PERMANENT else "reject"


class Classifier:
    """Operator rules first, then the shipped ones."""

    def __init__(self, extra: Sequence[Rule] = (), *, learned: bool = True) -> None:
        self.rules: tuple[Rule, ...] = (*extra, *builtin_rules())
        self.learned = learned

    @classmethod
    def from_file(cls, rules_file: str | Path | None) -> Classifier:
        return cls(load_rules_file(Path(rules_file)) if rules_file else ())

    def match(self, data: str) -> Match:
        """Read ``data`` and find the first rule it matches; ``classify`` decides from this."""
        data = data[:MAX_CLASSIFIED]
        reply = parse_reply(data)
        rule = _first(self.rules, reply)
        return Match(data, reply, rule, self.learned and (rule is None or rule.fallback))

    def needs_model(self, data: str) -> bool:
        """Whether classifying ``data`` asks the learned model: no rule, or only a catch-all,
        matches it. Lets a caller train the model (a second of CPU) only when it is needed."""
        return self.match(data).needs_model

    def classify(self, data: str | Match) -> Classification:
        """Category and action of a reply; pass a :class:`Match` to skip reading it again."""
        found = data if isinstance(data, Match) else self.match(data)
        reply, rule = found.reply, found.rule
        if found.needs_model:
            from zonerelay.bounces.learned import shipped_model  # it imports this module

            category = shipped_model().predict(found.data)
            message, rule_action = _MESSAGES[category], None
        elif rule is not None:
            category, message, rule_action = rule.category, rule.message, rule.action
        else:
            category = _fallback(reply.code, reply.status)
            message, rule_action = _MESSAGES[category], None
        action = decide_action(category, reply.code, rule_action, reply.status)
        return Classification(category, action, message, reply.code, reply.status)


def _first(rules: Iterable[Rule], reply: ParsedReply) -> Rule | None:
    lowered = reply.text.lower()
    return next((r for r in rules if r.matches(reply.text, reply.code, reply.status, lowered)), None)


@lru_cache(maxsize=1)
def _default() -> Classifier:
    return Classifier()


def classify(data: str) -> Classification:
    """Classify with the shipped rules only (use a Classifier for operator rules)."""
    return _default().classify(data)
