"""Bounce classification: the real-reply corpus, the action table, parsing and operator rules."""

from __future__ import annotations

import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from zonerelay.bounces import Classifier, RulesError, classify, parse_reply
from zonerelay.bounces.classify import CATEGORIES, decide_action, parse_rules

EXAMPLES = Path(__file__).parent.parent.parent / "zonerelay" / "bounces" / "examples"
CORPUS = EXAMPLES / "bounce_corpus.toml"


def load_corpus() -> list[dict[str, str]]:
    cases: list[dict[str, str]] = tomllib.loads(CORPUS.read_text("utf-8"))["case"]
    return cases


def load_cases(name: str) -> list[dict[str, str]]:
    cases: list[dict[str, str]] = tomllib.loads((CORPUS.parent / name).read_text("utf-8"))["case"]
    return cases


def accuracy(cases: list[dict[str, str]]) -> tuple[int, int, list[tuple[str, str, str]]]:
    """(right categories, right actions, misses as (reply, expected, got))."""
    category_ok = action_ok = 0
    misses = []
    for case in cases:
        result = classify(case["reply"])
        category_ok += result.category == case["category"]
        action_ok += result.action == case["action"]
        if (result.category, result.action) != (case["category"], case["action"]):
            misses.append(
                (case["reply"], f"{case['category']}/{case['action']}", f"{result.category}/{result.action}")
            )
    return category_ok, action_ok, misses


# The rules and the learned model are built from these sets. Holdouts 1-6 were each held out for
# ONE measurement before they became training data (1: 31/33 categories; 2: 57/70 categories and
# 65/70 actions; 3: 41/61 and 59/61 under the first rules; 4: 115/148 and 140/148 and 5: 91/126
# and 117/126 under the rebuilt rules; 6: 78/92 and 89/92, 7: 81/99 and 96/99, 8: 92/117 and
# 108/117, 9: 77/114 and 103/114, 10: 48/62 and 59/62, 11: 63/80 and 73/80, 12: 39/55 and 47/55,
# 13: 30/39 and 34/39, 14: 111/133 and 129/133, 15: 39/51 and 51/51,
# 16: 44/58 and 56/58, 17: 46/62 and 60/62, 18: 214/272 and 248/272,
# 19: 126/175 and 163/175, 20: 57/82 and 81/82, 21: 36/61 and 59/61 with the naive Bayes
# model; 22: 175/207 and 207/207, 23: 170/199 and 177/199, 24: 179/221 and 194/221, 25: 64/89
# and 82/89, 26: 85/101 and 98/101, 27: 86/97 and 93/97, 28: 67/79 and 75/79, 29: 171/213 and
# 195/213, 30: 99/123 and 118/123, 31: 30/40 and 39/40, 32: 56/76 and 73/76, 33 (the new texts
# of the natural sample natural1, measured with it): 75/86 and 81/86, 34 (natural2's): 88/92 and
# 92/92, 35 (natural3's): 22/22 and 22/22, 36 (natural4's): 22/23 and 23/23, 37 (natural5's):
# 10/11 and 11/11, 38 (natural6's): 6/7 and 7/7 with the linear SVM);
# docs/bounces.md keeps the history, and lists the thirteen training labels changed to follow
# tests/data/LABELLING.md or a provider's documentation.
TRAINING = ("bounce_corpus.toml", "bounce_holdout.toml", "bounce_holdout2.toml", "bounce_holdout3.toml",
            "bounce_holdout4.toml", "bounce_holdout5.toml", "bounce_holdout6.toml",
            "bounce_holdout7.toml", "bounce_holdout8.toml", "bounce_holdout9.toml",
            "bounce_holdout10.toml", "bounce_holdout11.toml", "bounce_holdout12.toml",
            "bounce_holdout13.toml", "bounce_holdout14.toml", "bounce_holdout15.toml",
            "bounce_holdout16.toml", "bounce_holdout17.toml", "bounce_holdout18.toml",
            "bounce_holdout19.toml", "bounce_holdout20.toml", "bounce_holdout21.toml",
            "bounce_holdout22.toml", "bounce_holdout23.toml", "bounce_holdout24.toml",
            "bounce_holdout25.toml", "bounce_holdout26.toml", "bounce_holdout27.toml",
            "bounce_holdout28.toml", "bounce_holdout29.toml",
            "bounce_holdout30.toml", "bounce_holdout31.toml", "bounce_holdout32.toml",
            "bounce_holdout33.toml", "bounce_holdout34.toml", "bounce_holdout35.toml",
            "bounce_holdout36.toml", "bounce_holdout37.toml", "bounce_holdout38.toml")  # fmt: skip
# Left wrong on purpose. Most of these replies meet only a catch-all rule (or none), so the model
# learned from the examples reads them; it reads these few otherwise than their labels, whose
# texts say little or point two ways (the labels came from a provider's documentation or a
# judgement call). Each comment: the label; what the classifier says.
KNOWN_MISSES = {
    "451 4.7.500 Access denied, please try again later.",  # blacklist; rules: rate_limit (4.7.5xx)
    # rate_limit (a sending quota); mailbox_full (same action)
    "554 5.7.1 <someone@example.com>: Recipient address rejected: Policy Rejection- Quota",
    "450 4.4.0 <someone@example.com> Temporary DMARC DNS lookup failure",  # transient; rules: auth
    "554 5.7.1 <bounce@example.com>: Sender address rejected: Blocked due to spam",  # blacklist; policy
    "554 Sending address not accepted due to spam filter",  # policy (the sender address); spam
    "450 Temp. resolver error (EREFUSED)",  # transient (the receiver's resolver); dns (same action)
    "517-Domain does not exist: example.org.",  # policy (Courier, the sender's domain); dns (same action)
    "501 Invisible customers are not welcome!",  # other (chasquid: EHLO without a name); protocol
    "550 5.7.1 Your mail client is not allowed",  # policy (a Postfix access-table text); blacklist
    # recipient (Microsoft: the recipient's tenant has no mailboxes); auth (same action)
    "451 4.4.4 Mail received as unauthenticated, incoming to a recipient domain configured in a hosted",
    "421 Problem resolving DNS for domain example.org",  # transient (the sender's domain); dns (same action)
    "error: 550 that IP address is not allowed to send",  # policy (SMTP2GO's allowed-IP list); blacklist
    "message count quota exceeded",  # rate_limit (the sender's quota); mailbox_full (same action)
    "550 5.5.0 Service unavailable",  # transient (Postfix, a milter down); blacklist (a refusal at connect)
    # other (a bare 500, no words); protocol (a 500 is a syntax error's code; same action)
    "Data command failed - 500",
    "{'user@example.com': (500, b'')}",
    # blacklist (Libero: a block for mailing invalid addresses); rate_limit (same action)
    "550 Too many invalid recipients.",
    # recipient (every recipient was refused); protocol (Postfix's "no valid recipients" at DATA)
    "550 5.7.1 Message rejected (no valid recipients).",
    # transient (the receiver's filter crashed); other (like Postfix's "Command died with status 1")
    'Command died with status 17: "/usr/sbin/amavis".',
    # transient (natural4's labellers: the receiver's delivery agent could not run); other, like
    # the examples' "Command died with status 1" (a split the labellers share)
    "Child process of dovecot_delivery transport returned 127",
}


@pytest.mark.parametrize("name", TRAINING)
def test_training_replies_are_all_classified_right(name: str) -> None:
    _, _, misses = accuracy(load_cases(name))
    unexpected = [m for m in misses if not any(m[0].startswith(k) for k in KNOWN_MISSES)]
    assert not unexpected, unexpected


def assert_well_formed(case: dict[str, Any]) -> None:
    """A labelled reply: a source, a known category, and the action the issue's rule gives."""
    assert case["source"].strip(), case
    assert case["category"] in CATEGORIES, case
    # a 4xx, or no reply code at all, is temporary; the code is where the parser finds it (its
    # own tests above): at the start, quoted by an MTA ("said: 550"), wrapped in a client's words
    # ("server message: 550", "reply=550", "(550, b'..."), or a bare "5.1.2" status
    # (tests/data/LABELLING.md); the action table itself is pinned by test_action_table
    reply = parse_reply(case["reply"])
    assert case["action"] == decide_action(case["category"], reply.code, None, reply.status), case


def test_second_held_out_set_is_well_formed() -> None:
    cases = load_cases("bounce_holdout2.toml")
    assert len(cases) >= 50
    providers = {c["provider"] for c in cases}
    for required in ("gmail", "microsoft", "yahoo", "icloud", "gmx", "web.de", "mail.ru", "yandex",
                     "proofpoint", "mimecast", "barracuda", "spamhaus", "spamcop", "postfix", "exim",
                     "sendmail", "exchange"):  # fmt: skip
        assert required in providers, required
    for case in cases:
        assert_well_formed(case)


def test_corpus_covers_the_providers_and_every_category() -> None:
    cases = load_corpus()
    providers = Counter(c["provider"] for c in cases)
    for required in ("gmail", "microsoft", "yahoo", "icloud", "gmx", "web.de", "mail.ru", "yandex",
                     "proofpoint", "mimecast", "barracuda", "spamhaus", "spamcop", "postfix", "exim",
                     "sendmail", "exchange"):  # fmt: skip
        assert providers[required] >= 1, required
    assert {c["category"] for c in cases} == set(CATEGORIES)
    for case in cases:
        temporary = case["reply"][0] == "4" or not case["reply"][0].isdigit()
        retried = case["category"] in {"blacklist", "rate_limit", "mailbox_full"}
        expected = "defer" if temporary or retried else "reject"
        assert case["action"] == expected, case


def test_reference_example() -> None:
    data = (
        "552-5.7.0 This message was blocked because its content presents a potential\n"
        "552-5.7.0 security issue. Please visit\n"
        "552-5.7.0 http://support.google.com/mail/bin/answer.py?answer=6590 to review our\n"
        "552 5.7.0 message content and attachment content guidelines. cp3si16622595oec.101 - gsmtp"
    )
    result = classify(data)
    assert result.as_dict() == {
        "action": "reject",
        "category": "virus",
        "message": "Suspicious attachment",
        "code": 552,
        "status": "5.7.0",
    }


@pytest.mark.parametrize(
    ("category", "code", "action"),
    [
        ("recipient", 550, "reject"),
        ("recipient", 450, "defer"),  # a 4xx is never final
        ("blacklist", 554, "defer"),
        ("rate_limit", 550, "defer"),
        ("mailbox_full", 552, "defer"),
        ("greylist", 451, "defer"),
        ("spam", 550, "reject"),
        ("virus", 554, "reject"),
        ("auth", 550, "reject"),
        ("policy", 554, "reject"),
        ("size", 552, "reject"),
        ("dns", 550, "reject"),
        ("protocol", 500, "reject"),
        ("transient", None, "defer"),  # no reply: connection failure
        ("other", 554, "reject"),
    ],
)
def test_action_table(category: str, code: int | None, action: str) -> None:
    assert decide_action(category, code) == action


@pytest.mark.parametrize(
    ("category", "code", "status", "action"),
    [
        ("greylist", 550, None, "defer"),  # a greylisting 5xx asks for a retry like a 4xx
        ("size", None, "5.2.0", "reject"),  # no code: a 5.x.x status stands for a 5xx
        ("recipient", None, "4.1.1", "defer"),
        ("recipient", None, None, "defer"),
    ],
)
def test_action_table_by_status(category: str, code: int | None, status: str | None, action: str) -> None:
    assert decide_action(category, code, None, status) == action


@pytest.mark.parametrize(
    ("data", "code", "status", "text"),
    [
        ("550 5.1.1 No such user", 550, "5.1.1", "No such user"),
        ("550-5.1.1 first\r\n550 5.1.1 second", 550, "5.1.1", "first second"),
        (
            "554-gmx.net Nemesis\n554-No SMTP service\n554 visit",
            554,
            None,
            "gmx.net Nemesis No SMTP service visit",
        ),
        ("452-4.2.2 over quota 452-4.2.2 the recipient", 452, "4.2.2", "over quota the recipient"),
        ("smtp;550 5.7.1 blocked", 550, "5.7.1", "blocked"),
        ("connect: Connection refused", None, None, "connect: Connection refused"),
        ("550 mailbox 4.2.2 unavailable", 550, None, "mailbox 4.2.2 unavailable"),  # class must agree
        ("5.2.0 Email size exceeded", None, "5.2.0", "5.2.0 Email size exceeded"),  # status alone
        # qmail reports no code, only a "(#5.1.2)" trailer: a permanent failure
        ("No host named example.com. (#5.1.2)", None, "5.1.2", "No host named example.com. (#5.1.2)"),
        # an MTA's report quoting the remote reply (Postfix, Exim)
        ("host mx.example.com said: 554 5.7.1 No", 554, "5.7.1", "host mx.example.com said: No"),
        ("SMTP error from remote mail server after RCPT TO:<a@example.com>: 550 No", 550, None,
         "SMTP error from remote mail server after RCPT TO:<a@example.com>: No"),
        # a client's own words around the remote reply, as its log or bounce gives them
        ("msmtp: server message: 550 5.1.1 No such user\nmsmtp: could not send mail", 550, "5.1.1",
         "msmtp: server message: No such user msmtp: could not send mail"),
        ("to=<a@example.com>, delay=00:00:01, pri=30111, dsn=5.1.1, reply=550 5.1.1 No, stat=User unknown",
         550, "5.1.1",
         "to=<a@example.com>, delay=00:00:01, pri=30111, dsn=5.1.1, reply=550 5.1.1 No, stat=User unknown"),
        ('result="PermFail" stat="552-5.3.4 Too big"', 552, "5.3.4",
         'result="PermFail" stat="552-5.3.4 Too big"'),
        ("    (reason: 553 5.3.0 TLS handshake failed.)", 553, "5.3.0", "(reason: TLS handshake failed.)"),
        ("SMTP error from remote mail server after pipelined MAIL FROM:<a@example.com> SIZE=30178: 552 Big",
         552, None,
         "SMTP error from remote mail server after pipelined MAIL FROM:<a@example.com> SIZE=30178: Big"),
        # a Sendmail transcript: the remote reply after "<<< ", not Sendmail's own last line
        ("... while talking to mx.example.com.:\n>>> MAIL From:<a@example.com>\n<<< 553 5.1.8 No domain\n"
         "501 5.6.0 Data format error", 553, "5.1.8",
         "... while talking to mx.example.com.: >>> MAIL From:<a@example.com> No domain Data format error"),
        # Python's smtplib exceptions, a DSN's fields, Exim's authenticator log, swaks' transcript
        ("smtplib.SMTPDataError: (550, b'5.7.1 Spam')", 550, "5.7.1",
         "smtplib.SMTPDataError: (550, b'5.7.1 Spam')"),
        ("Action: delayed\nStatus: 4.4.2\nDiagnostic-Code: SMTP; 421 4.4.1 Connection reset", 421, "4.4.1",
         "Action: delayed Status: 4.4.2 Diagnostic-Code: SMTP; Connection reset"),
        ("Action: failed\nStatus: 5.0.0\nDiagnostic-Code: unknown; No such domain.", None, "5.0.0",
         "Action: failed Status: 5.0.0 Diagnostic-Code: unknown; No such domain."),
        ("a@example.com failed after MAIL FROM: 5.7.0 Authentication required", None, "5.7.0",
         "a@example.com failed after MAIL FROM: 5.7.0 Authentication required"),
        ("plain_client authenticator failed H=mx.example.com [192.0.2.1] 535 5.7.8 Bad", 535, "5.7.8",
         "plain_client authenticator failed H=mx.example.com [192.0.2.1] Bad"),
        ("<** 535 5.7.8 Bad\n*** No authentication type succeeded", 535, "5.7.8",
         "Bad *** No authentication type succeeded"),
        ("to=<a@example.com>, mailer=local, dsn=5.3.0, stat=unknown mailer error 127", None, "5.3.0",
         "to=<a@example.com>, mailer=local, dsn=5.3.0, stat=unknown mailer error 127"),
        # sendEmail's tab after "Received:", PEAR's "(code: 550, response: ...)", MIME::Lite's status
        # on the line after "command failed:", Net::SMTP's "Last server message was:5.3.4"
        ("ERROR => Received: \t552 5.3.4 Error: message file too big", 552, "5.3.4",
         "ERROR => Received:  Error: message file too big"),
        ("Failed to add recipient: a@example.com [SMTP: Invalid response code received from server"
         " (code: 550, response: 5.1.1 No)]", 550, "5.1.1",
         "Failed to add recipient: a@example.com [SMTP: Invalid response code received from server"
         " (code: 550, response: 5.1.1 No)]"),
        ("SMTP recipient() command failed: \n5.1.1 <a@example.com>: No", None, "5.1.1",
         "SMTP recipient() command failed: 5.1.1 <a@example.com>: No"),
        ("DATAEND command failed.\nLast server message was:5.3.4 Error: too big", None, "5.3.4",
         "DATAEND command failed. Last server message was:5.3.4 Error: too big"),
        # holdout24's wrappers: Exchange's "returned '550", Swift Mailer's 'with message "550',
        # Ruby's "Net::SMTPFatalError (555", maddy's JSON, a Postfix "said: 530" and a new line,
        # a status on a line of its own, a milter's ". 5.7.1"
        ("Remote Server returned '550 5.1.3 STOREDRV.Submit; invalid'", 550, "5.1.3",
         "Remote Server returned '550 5.1.3 STOREDRV.Submit; invalid'"),
        ('Expected response code 250 but got code "535", with message "535 5.7.0 Bad login "', 535, "5.7.0",
         'Expected response code but got code "535", with message "535 5.7.0 Bad login "'),
        ("Net::SMTPFatalError (555 5.5.2 Syntax error.\n):", 555, "5.5.2",
         "Net::SMTPFatalError (555 5.5.2 Syntax error. ):"),
        ('{"reason":"null MX","smtp_code":556,"smtp_enchcode":"5.1.10"}', 556, "5.1.10",
         '{"reason":"null MX","smtp_code":556,"smtp_enchcode":"5.1.10"}'),
        ("host\n    mx.example.com[192.0.2.1] said: 530\n    Authentication required", 530, None,
         "host mx.example.com[192.0.2.1] said: Authentication required"),
        ("SMTP error after RCPT command:\nhost: mx.example.com\n5.1.1 <a@example.com>... No", None, "5.1.1",
         "SMTP error after RCPT command: host: mx.example.com 5.1.1 <a@example.com>... No"),
        ("milter-reject for END-OF-MESSAGE. 5.7.1 rejected by DMARC policy", None, "5.7.1",
         "milter-reject for END-OF-MESSAGE. 5.7.1 rejected by DMARC policy"),
        # IONOS's report of a refused recipient, and Stalwart's
        ("(host 'mx' rejected command 'RCPT TO:<a@example.com>' with code 550 (5.5.0) 'No.')", 550, "5.5.0",
         "(host 'mx' rejected command 'RCPT TO:<a@example.com>' with code (5.5.0) 'No.')"),
        ("The following recipients are not reachable: 'a@example.com' 550 must be authenticated", 550, None,
         "The following recipients are not reachable: 'a@example.com' must be authenticated"),
        # Haraka's DSN status with the remote reply in parentheses
        ("5.1.0 (450 DNS lookup failure: example.com)", 450, None,
         "5.1.0 (450 DNS lookup failure: example.com)"),
        # tcllib's smtp error (the reply code last), and a Swift Mailer text whose first code is
        # the one it expected, not the reply
        ("diagnostic {5.7.0 Authentication required} args {} code 530", 530, "5.7.0",
         "diagnostic {5.7.0 Authentication required} args {} code 530"),
        ('Expected response code 250 but got code "550", with message "550 5.1.1 No "', 550, "5.1.1",
         'Expected response code but got code "550", with message "550 5.1.1 No "'),
        # simplesmtp's "<words> - 535 ...", the npm sendmail package's "SMTP code:552 msg:..."
        ("Invalid login - 535 5.7.8 Error: authentication failed", 535, "5.7.8",
         "Invalid login - Error: authentication failed"),
        ("SMTP code:552 msg:552 Error: Too much mail data", 552, None,
         "SMTP code:552 msg:552 Error: Too much mail data"),
        # the last resort for wrappers no pattern knows: a code and a status of its class anywhere,
        # or a code after the word "code"
        ("mail.example.com ESMTP 550 5.7.0  Mail from 192.0.2.1 refused", 550, "5.7.0",
         "mail.example.com ESMTP  Mail from 192.0.2.1 refused"),
        ("relay said (rejected 550 5.1.1 no such user)", 550, "5.1.1", "relay said (rejected no such user)"),
        ("delivery failed, status code=554: transaction failed", 554, None,
         "delivery failed, status code=554: transaction failed"),
        ("user@example.com, ERROR_CODE :550, ERROR_CODE :The email has an invalid DKIM signature", 550, None,
         "user@example.com, ERROR_CODE :550, ERROR_CODE :The email has an invalid DKIM signature"),
        ("SMTP error, DATA:554 One or more recipients are invalid", 554, None,
         "SMTP error, DATA:554 One or more recipients are invalid"),
        # a Microsoft NDR's "550;" before the status (natural1)
        ("550; 5.7.515 Access denied, sending domain example.com does not meet the required level.", 550,
         "5.7.515", "Access denied, sending domain example.com does not meet the required level."),
        # Microsoft's status with a full stop, an Exchange NDR's "<server #5.1.1>" (holdout29)
        ("5.7.1. Unable To Relay: Blocked by Customer Allow list", None, "5.7.1",
         "5.7.1. Unable To Relay: Blocked by Customer Allow list"),
        ("The e-mail account does not exist.\n<server.example.com #5.1.1>", None, "5.1.1",
         "The e-mail account does not exist. <server.example.com #5.1.1>"),
        # digits that are no reply code
        ("message is too big (transport limit = 500)", None, None,
         "message is too big (transport limit = 500)"),
        ("syntax error parsing: HTTP/1.1 400 Bad Request", None, None,
         "syntax error parsing: HTTP/1.1 400 Bad Request"),
        ("Winsock error code: 10060", None, None, "Winsock error code: 10060"),
        ('Command died with status 1: "/bin/false"', None, None, 'Command died with status 1: "/bin/false"'),
    ],
)
def test_parse_reply(data: str, code: int | None, status: str | None, text: str) -> None:
    reply = parse_reply(data)
    assert (reply.code, reply.status, reply.text) == (code, status, text)


def test_a_qmail_send_log_line_is_read_with_its_underscores_as_spaces() -> None:
    found = Classifier(learned=False).classify(
        "delivery 7: failure: 192.0.2.1_does_not_like_recipient./Remote_host_said:_550_5.1.1_No_such_user/"
        "Giving_up_on_192.0.2.1./"
    )
    assert (found.category, found.action, found.code, found.status) == ("recipient", "reject", 550, "5.1.1")


@pytest.mark.parametrize(
    ("data", "category"),
    [
        ("550 5.1.1 whatever", "recipient"),  # enhanced status fallback (RFC 3463)
        ("552 5.2.2 whatever", "mailbox_full"),
        ("550 5.7.1 whatever", "policy"),
        ("451 4.3.0 whatever", "transient"),
        ("554 whatever", "other"),
        ("450 whatever", "transient"),
    ],
)
def test_fallback_by_status_and_code(data: str, category: str) -> None:
    """Without the learned model, what no rule matches goes by its status, then its code."""
    assert Classifier(learned=False).classify(data).category == category


@pytest.mark.parametrize(
    ("data", "category"),
    [
        ("550 5.1.1 whatever", "recipient"),  # the status code is one of the model's tokens
        ("552 5.2.2 whatever", "mailbox_full"),
        ("550 5.7.1 Message refused: the content scored too high on our filter", "spam"),
        ("421 4.3.0 Service temporarily unavailable, please try again later", "transient"),
    ],
)
def test_learned_model_reads_what_only_a_catch_all_matches(data: str, category: str) -> None:
    reply = parse_reply(data)
    rule = next((r for r in Classifier().rules if r.matches(reply.text, reply.code, reply.status)), None)
    assert rule is None or rule.fallback  # the model decides these, not a specific rule
    assert Classifier().needs_model(data) and not Classifier(learned=False).needs_model(data)
    assert classify(data).category == category
    found = Classifier().match(data)  # the worker matches once, then classifies off the event loop
    assert found.needs_model and Classifier().classify(found) == classify(data)


def test_a_reply_a_rule_takes_never_waits_for_the_model() -> None:
    # workers train the model only when a failure needs it: a rate-limit or blocklist reply that
    # a rule knows must be acted on at once (the next transactions depend on it)
    assert not Classifier().needs_model("451 4.7.28 rate limited, please slow down")
    spamhaus = "554 5.7.1 Service unavailable; Client host [1.2.3.4] blocked using zen.spamhaus.org"
    assert not Classifier().needs_model(spamhaus)


def test_fallback_rules_defer_to_the_learned_model(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text("[[rule]]\ncategory = 'other'\nmessage = 'Catch-all'\npattern = '.'\nfallback = true\n")
    classifier = Classifier.from_file(rules)
    assert classifier.classify("550 5.1.1 whatever").category == "recipient"  # the model, not 'other'
    assert Classifier(classifier.rules[:1], learned=False).classify("550 5.1.1 x").category == "other"


def test_operator_rules_are_tried_first(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        "[[rule]]\ncategory = 'blacklist'\nmessage = 'Local appliance says IP is bad'\n"
        "pattern = '''ACME-REP-\\d+'''\n\n"
        "[[rule]]\ncategory = 'recipient'\nmessage = 'Gone'\ncode = '55[0-4]'\nstatus = '5\\.0\\.0'\n"
        "pattern = 'gone away'\naction = 'reject'\n"
    )
    classifier = Classifier.from_file(rules)
    result = classifier.classify("550 5.7.1 Message content rejected ACME-REP-17")
    assert (result.category, result.action, result.message) == (
        "blacklist", "defer", "Local appliance says IP is bad")  # fmt: skip
    assert classifier.classify("554 5.0.0 user gone away").category == "recipient"
    assert classifier.classify("454 4.0.0 user gone away").action == "defer"  # rules cannot make a 4xx final
    assert classifier.classify("550 5.1.1 No such user").category == "recipient"  # shipped rules still apply


def test_rule_patterns_ignore_case_unless_they_ask_for_it(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        "[[rule]]\ncategory = 'spam'\nmessage = 'Appliance'\npattern = '''Blocked By \\SSENTRY\\W'''\n"
        "unless = '''\\bTEST\\b'''\n\n"
        "[[rule]]\ncategory = 'virus'\nmessage = 'Scanner'\npattern = '''(?-i:FOUND)'''\n"
    )
    classifier = Classifier(Classifier.from_file(rules).rules[:2], learned=False)
    assert classifier.classify("550 blocked by XSENTRY.").message == "Appliance"  # \S and \W kept
    assert classifier.classify("550 BLOCKED BY xsentry!").message == "Appliance"
    assert classifier.classify("550 blocked by xsentry! (test)").message != "Appliance"  # unless, any case
    assert classifier.classify("554 stream: Eicar-Signature FOUND").message == "Scanner"
    assert classifier.classify("554 nothing found").message != "Scanner"  # (?-i:) keeps its case


@pytest.mark.parametrize(
    ("pattern", "text", "hit"),
    [
        (r"(?s-i:AB)", "ab", False),  # asks for case in another form
        (r"(?s-i:AB)", "AB", True),
        (r"\x41BC", "abc", True),  # a character named by its code may be a capital: as written
        (r"\N{LATIN CAPITAL LETTER A}bc", "ABC", True),
        (r"(blocked)\W+\1", "BLOCKED, blocked", True),
    ],
)
def test_rule_patterns_in_every_form_match_as_written(pattern: str, text: str, hit: bool) -> None:
    (rule,) = parse_rules({"rule": [{"category": "spam", "pattern": pattern}]}, "test")
    assert rule.matches(text, 550, None) is hit


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[[rule]]\ncategory = 'nonsense'\npattern = 'x'\n", "category must be one of"),
        ("[[rule]]\ncategory = 'spam'\npattern = '('\n", "bad pattern"),
        ("[[rule]]\ncategory = 'spam'\n", "needs a pattern"),
        ("[[rule]]\ncategory = 'spam'\npattern = 'x'\ncolour = 'red'\n", "unknown key 'colour'"),
        ("[[rule]]\ncategory = 'spam'\npattern = 'x'\naction = 'bounce'\n", "action must be"),
    ],
)
def test_bad_rules_files_are_refused_with_the_rule_named(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(RulesError, match="rule 1") as info:
        Classifier.from_file(path)
    assert error in str(info.value)


def test_unless_keeps_a_rule_off_replies_it_should_not_take(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        "[[rule]]\ncategory = 'blacklist'\nmessage = 'Appliance block'\npattern = 'blocked'\n"
        "unless = 'sender address'\n"
    )
    classifier = Classifier.from_file(rules)
    assert classifier.classify("554 5.7.1 Connection blocked").message == "Appliance block"
    # the operator's rule steps aside; the shipped rules decide
    assert classifier.classify("554 5.7.1 Sender address blocked").category == "policy"


@pytest.mark.parametrize(
    ("data", "category", "action"),
    [
        ("connect: cannot connect to 192.0.2.1:25: [Errno 111] Connection refused", "transient", "defer"),
        ("connect: timed out after 30s", "transient", "defer"),
        ("message: connection lost while sending data: [Errno 104] reset", "transient", "defer"),
        ("ehlo: connection closed by the server", "transient", "defer"),
        ("starttls: TLS handshake failed: [SSL: WRONG_VERSION_NUMBER]", "transient", "defer"),
        ("starttls: server sent data after its 220 reply to STARTTLS", "transient", "defer"),
        ("protocol: bad reply line b'HTTP/1.1 400'", "protocol", "defer"),
        ("550 5.1.2 domain example.invalid does not exist", "dns", "reject"),
        ("550 5.1.10 domain example.com accepts no mail (null MX)", "dns", "reject"),
        ("451 4.4.3 DNS timeout looking up MX of example.com", "dns", "defer"),
        ("451 4.4.1 No MX host could be reached", "transient", "defer"),
        ("451 4.4.0 Zone bulk has no usable IPv6 source address for example.com", "other", "defer"),
        ("553 5.6.7 The receiving server does not support SMTPUTF8", "protocol", "reject"),
        ("552 5.3.4 Message size exceeds fixed maximum message size", "size", "reject"),
        ("554 5.3.0 Message data is missing from the queue", "other", "reject"),
    ],
)
def test_zonerelays_own_failure_texts(data: str, category: str, action: str) -> None:
    """What the transport records when there is no remote reply (or it made one up) is classified too."""
    result = classify(data)
    assert (result.category, result.action) == (category, action)


NAMED = ("gmail", "microsoft", "outlook.com", "yahoo", "aol", "icloud", "gmx", "yandex", "proofpoint",
         "mimecast", "barracuda", "spamhaus", "postfix", "exim", "sendmail", "exchange")  # fmt: skip
# (set, size, the providers it must cover): holdout8 came after their usual texts were
# all in the earlier sets, so it is mostly the long tail and covers them only in part
BLIND_SETS = [("bounce_holdout3.toml", 61, NAMED), ("bounce_holdout4.toml", 148, NAMED),
              ("bounce_holdout5.toml", 126, NAMED), ("bounce_holdout6.toml", 92, NAMED),
              ("bounce_holdout7.toml", 99, NAMED),
              ("bounce_holdout8.toml", 117, ("gmail", "microsoft", "outlook.com", "yahoo", "mimecast",
                                             "spamhaus", "postfix", "exim", "sendmail")),
              ("bounce_holdout9.toml", 114, ("gmail", "microsoft", "outlook.com", "yahoo", "aol", "yandex",
                                             "barracuda", "spamhaus", "postfix", "exim", "sendmail",
                                             "exchange")),
              ("bounce_holdout10.toml", 62, ("gmail", "microsoft", "proofpoint", "mimecast", "barracuda",
                                             "spamhaus", "postfix", "exim", "sendmail",
                                             "exchange")),
              ("bounce_holdout11.toml", 80, ("gmail", "microsoft", "outlook.com", "icloud", "mimecast",
                                             "postfix", "exim", "exchange")),
              # the long tail, collected once the named providers' findable texts were all in
              ("bounce_holdout12.toml", 55, ("postfix", "exchange")),
              ("bounce_holdout13.toml", 39, ("gmail", "yahoo", "icloud", "yandex", "proofpoint",
                                             "sendmail")),
              # replies generated by real MTAs from Debian's packages, run on loopback
              ("bounce_holdout14.toml", 133, ("postfix", "exim", "sendmail")),
              # receivers' filters and delivery agents, and MTAs' own failure texts, generated too
              ("bounce_holdout15.toml", 51, ("postfix", "exim")),
              # other SMTP servers and policy daemons, generated too
              ("bounce_holdout16.toml", 58, ("postfix",)),
              ("bounce_holdout17.toml", 62, ("postfix", "exim")),
              # milters, Exim/Sendmail ACLs, sending clients, Haraka plugins, Postfix walked through
              ("bounce_holdout18.toml", 272, ("postfix", "exim", "sendmail")),
              # rspamd, qpsmtpd, sending libraries, MTAs' delivery side and DSNs
              ("bounce_holdout19.toml", 175, ("exim", "sendmail")),
              # stock Postfix and Exim texts no set had
              ("bounce_holdout20.toml", 82, ("postfix", "exim")),
              ("bounce_holdout21.toml", 61, ("sendmail",)),
              ("bounce_holdout22.toml", 207, ("aiosmtplib", "jakarta-mail", "emailjs",
                                              "python-slimta")),
              ("bounce_holdout23.toml", 199, ("pear-mail", "mime-lite", "sendemail", "mail-sendmail",
                                              "ruby-mail", "mailutils")),
              # published replies again, aimed at the named providers and at senders' issue threads
              ("bounce_holdout24.toml", 221, ("gmail", "microsoft", "exchange", "postfix", "exim",
                                              "mail.ru", "yandex", "yahoo")),
              # business mail servers, security gateways and hosting platforms as receivers
              ("bounce_holdout25.toml", 89, ("stalwart", "hmailserver", "symantec", "cpanel")),
              # LMTP and list receivers, policy servers behind Postfix, SMTP libraries and clients
              ("bounce_holdout26.toml", 101, ("dovecot", "cyrus", "exim", "postfix", "smtp-server",
                                              "aiosmtpd")),
              # mail libraries' and frameworks' errors in PHP, Java, Perl, Tcl, Lua, Python, Ruby, Node
              ("bounce_holdout27.toml", 97, ("symfony-mailer", "commons-email", "net-smtp-tls",
                                             "tcllib-smtp", "django", "actionmailer")),
              # MTAs' delivery side under TLS, DNS and connection faults; small servers and clients
              ("bounce_holdout28.toml", 79, ("postfix", "exim", "sendmail", "simplesmtp",
                                             "smtp-protocol")),
              # published replies: the named providers, European and Asian ISPs, gateways, MTAs
              ("bounce_holdout29.toml", 213, ("gmail", "microsoft", "exchange", "postfix", "qq",
                                              "mailchannels", "godaddy")),
              # published replies: pastebin logs, bounce parsers' corpora, non-English pages
              ("bounce_holdout30.toml", 123, ("gmail", "qmail", "postfix", "exim", "aliyun")),
              # bounce parsers' sample mails, Coremail's index of bounce texts
              ("bounce_holdout31.toml", 40, ("comcast", "exchange", "domino", "coremail")),
              # the rest of that corpus, and Mailman's bounces in flufl.bounce's test data
              ("bounce_holdout32.toml", 76, ("postfix", "exim", "aol", "mimecast", "pmdf")),
              # the new texts of a natural sample of the named providers' replies (natural1)
              ("bounce_holdout33.toml", 86, ("gmail", "microsoft", "yahoo", "spamhaus", "spamcop",
                                             "yandex", "postfix", "exim", "sendmail")),
              ("bounce_holdout34.toml", 92, ("gmail", "microsoft", "yandex", "gmx", "spamhaus", "postfix",
                                             "exim", "sendmail")),
              ("bounce_holdout35.toml", 22, ("gmail", "microsoft", "mimecast", "postfix")),
              ("bounce_holdout36.toml", 23, ("gmail", "yahoo", "outlook.com", "postfix",
                                             "exim")),
              ("bounce_holdout37.toml", 11, ("gmail", "yahoo", "microsoft", "postfix")),
              ("bounce_holdout38.toml", 7, ("gmail", "mimecast", "spamhaus"))]  # fmt: skip


@pytest.mark.parametrize(("name", "size", "required"), BLIND_SETS)
def test_blind_held_out_sets_are_well_formed_and_new(name: str, size: int, required: tuple[str, ...]) -> None:
    cases = load_cases(name)
    assert len(cases) == size
    providers = {c["provider"] for c in cases}
    assert not set(required) - providers
    replies = {c["reply"] for c in cases}
    assert len(replies) == len(cases)
    for other in TRAINING[: TRAINING.index(name)]:
        assert not replies & {c["reply"] for c in load_cases(other)}, other
    for case in cases:
        assert_well_formed(case)


@pytest.mark.parametrize(("name", "size", "seen"), [("bounce_natural1.toml", 201, 99),
                                                    ("bounce_natural2.toml", 192, 92),
                                                    ("bounce_natural3.toml", 60, 37),
                                                    ("bounce_natural4.toml", 51, 28),
                                                    ("bounce_natural5.toml", 29, 18),
                                                    ("bounce_natural6.toml", 25, 18)])
def test_natural_samples_are_well_formed(name: str, size: int, seen: int) -> None:
    """tests/data/bounce_natural*.toml, the named providers' replies as people meet them: copies
    of examples kept (``seen``), so they are read by bench/bounce_accuracy.py, not trained on."""
    cases = tomllib.loads((Path(__file__).parent.parent / "data" / name).read_text("utf-8"))["case"]
    assert len(cases) == size
    assert sum(c["seen"] for c in cases) == seen
    named = {"gmail", "microsoft", "outlook.com", "exchange", "yahoo", "aol", "icloud", "gmx", "web.de",
             "1und1", "mail.ru", "yandex", "proofpoint", "mimecast", "barracuda", "spamhaus", "spamcop",
             "uceprotect", "postfix", "exim", "sendmail"}  # fmt: skip
    assert {c["provider"] for c in cases} <= named
    for case in cases:
        assert_well_formed(case)
        # every labeller's reading is kept (bench/natural_sample.py figures)
        for who in ("collector", "relabeller", "third"):
            if who in case:
                category, action = case[who].split("/")
                assert category in CATEGORIES and action in ("reject", "defer"), case
        assert ("third" in case) == (case["collector"] != case["relabeller"]), case


@pytest.mark.parametrize(
    ("data", "category"),
    [
        ("550 5.1.1 Benutzer unbekannt", "recipient"),
        ("550 Empfänger existiert nicht", "recipient"),
        ("550 5.1.1 Utilisateur inconnu", "recipient"),
        ("550 L'adresse du destinataire n'existe pas", "recipient"),
        ("550 5.1.1 El usuario no existe", "recipient"),
        ("550 Utente sconosciuto", "recipient"),
        ("550 Usuário desconhecido", "recipient"),
        ("550 Пользователь не найден", "recipient"),
        ("550 Użytkownik nie istnieje", "recipient"),
        ("550 Adresát neexistuje", "recipient"),
        ("550 收件人不存在", "recipient"),
        ("550 Le domaine n'existe pas", "dns"),
        ("550 L'expéditeur n'existe pas", "policy"),
        ("452 4.2.2 Postfach ist voll", "mailbox_full"),
        ("452 Boîte aux lettres pleine", "mailbox_full"),
        ("452 Buzón lleno", "mailbox_full"),
        ("452 Почтовый ящик переполнен", "mailbox_full"),
        ("452 邮箱已满", "mailbox_full"),
        ("421 Zu viele Verbindungen von Ihrer IP", "rate_limit"),
        ("421 Trop de connexions", "rate_limit"),
        ("421 Слишком много соединений", "rate_limit"),
        ("550 Ihre Nachricht wurde als Spam erkannt", "spam"),
        ("550 Message considéré comme spam", "spam"),
        ("550 Письмо похоже на спам", "spam"),
        ("554 Votre adresse IP est sur liste noire", "blacklist"),
        ("554 Ваш IP заблокирован", "blacklist"),
        ("552 Die Nachricht ist zu groß", "size"),
        ("552 Message trop volumineux", "size"),
        ("554 Virus gefunden", "virus"),
    ],
)
def test_replies_in_other_languages(data: str, category: str) -> None:
    """The rules read the usual refusals in the languages receivers answer in, not only English
    (phrases written for this test, not measured replies: those are in the examples)."""
    assert classify(data).category == category


def test_only_the_start_of_a_huge_reply_is_read() -> None:
    # what a reply says is said in its first lines; the rest could cost seconds of CPU
    data = "550 5.1.1 user unknown " + "x" * 5000 + " mailbox is over quota"
    assert Classifier(learned=False).classify(data).category == "recipient"
    assert classify(data[:30] + data[-22:]).category == "mailbox_full"  # the same words, read
