"""DSN construction (RFC 3464), read back with Python's email package."""

from __future__ import annotations

import email
import email.policy

import pytest

from zonerelay.bounces.dsn import FailedRecipient, build_dsn, dsn_status, should_send_dsn
from zonerelay.bounces.events import DSN, DSN_DELAYED, crossed_delay_warning, notices_for
from zonerelay.bounces.notify import DSN_GROUP_MAX, dsn_ready, retry_delay, signature
from zonerelay.config import load_config
from zonerelay.store.base import Delivery, DeliveryStatus, OutboxEntry

HEADERS = (
    b"From: Alice <alice@example.com>\r\nSubject: Quarterly report\r\nMessage-ID: <q1@example.com>\r\n\r\n"
)


def test_dsn_is_a_delivery_status_report_with_every_failed_recipient() -> None:
    failed = [
        FailedRecipient("bob@example.net", "550 5.1.1 <bob@example.net>: user does not exist", "5.1.1",
                        "Unknown recipient", "mx.example.net", 1_700_000_100.0),
        FailedRecipient("carol@example.net", "451 4.4.1 No MX host could be reached", "4.4.1",
                        "Temporary failure", None, 1_700_000_200.0),
    ]  # fmt: skip
    data = build_dsn(
        reporting_mta="relay.test",
        dsn_from="MAILER-DAEMON@relay.test",
        sender="alice@example.com",
        queue_id="18a3c1e0f4b0001a2b",
        arrival=1_700_000_000.0,
        original_headers=HEADERS,
        failed=failed,
        zone="bounces",
        now=1_700_000_300.0,
    )
    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF only
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["To"].addresses[0].addr_spec == "alice@example.com" and msg["X-Sending-Zone"] == "bounces"
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    human, status, headers = msg.get_payload()
    assert human.get_content_type() == "text/plain"
    assert "bob@example.net" in human.get_content() and "user does not exist" in human.get_content()
    assert status.get_content_type() == "message/delivery-status"
    per_message, bob, carol = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; relay.test"
    assert per_message["Arrival-Date"] == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert (bob["Final-Recipient"], bob["Action"], bob["Status"]) == (
        "rfc822; bob@example.net",
        "failed",
        "5.1.1",
    )
    assert bob["Remote-MTA"] == "dns; mx.example.net"
    assert bob["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@example.net>: user does not exist"
    assert bob["Last-Attempt-Date"]
    assert carol["Status"] == "5.4.1" and carol["Remote-MTA"] is None  # an expired 4xx is reported as failed
    assert headers.get_content_type() == "text/rfc822-headers"
    assert "Subject: Quarterly report" in headers.get_payload()


@pytest.mark.parametrize(
    ("sender", "meta", "send"),
    [
        ("alice@example.com", {"interface": "feeder"}, True),
        ("", {"interface": "feeder"}, False),  # never to the null sender
        ("alice@example.com", {"interface": "bounce"}, False),  # never about a DSN
    ],
)
def test_dsn_loop_rules(sender: str, meta: dict[str, str], send: bool) -> None:
    assert should_send_dsn(sender, meta) is send


@pytest.mark.parametrize(
    ("status", "response", "expected"),
    [("5.2.2", "552 5.2.2 full", "5.2.2"), ("4.7.1", "451 4.7.1 x", "5.7.1"), (None, "554 no", "5.0.0"),
     (None, "connect: refused", "5.0.0"), (None, "451 later", "5.4.7")],
)  # fmt: skip
def test_dsn_status(status: str | None, response: str, expected: str) -> None:
    assert dsn_status(status, response) == expected


def test_delayed_dsn_says_still_retried_with_4xx_status_and_will_retry_until() -> None:
    delayed = [
        FailedRecipient("bob@example.net", "451 4.7.1 Greylisted, please try again later", "4.7.1",
                        "Greylisted", "mx.example.net", 1_700_003_600.0, will_retry_until=1_700_432_000.0),
        FailedRecipient("carol@example.net", "552 5.2.2 Mailbox full", "5.2.2", "Mailbox full",
                        "mx.example.net", 1_700_003_601.0, will_retry_until=1_700_432_000.0),
    ]  # fmt: skip
    data = build_dsn(
        reporting_mta="relay.test",
        dsn_from="MAILER-DAEMON@relay.test",
        sender="alice@example.com",
        queue_id="18a3c1e0f4b0001a2b",
        arrival=1_700_000_000.0,
        original_headers=HEADERS,
        failed=delayed,
        now=1_700_003_700.0,
        action="delayed",
    )
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    assert msg["Auto-Submitted"] == "auto-replied" and msg.get_param("report-type") == "delivery-status"
    human, status, headers = msg.get_payload()
    text = " ".join(human.get_content().split())
    assert "still being retried" in text and "do not need to send it again" in text
    assert "Greylisted, please try again later" in text and "Sun, 19 Nov 2023 22:13:20 GMT" in text
    _per_message, bob, carol = status.get_payload()
    assert (bob["Action"], bob["Status"]) == ("delayed", "4.7.1")
    assert carol["Status"] == "4.2.2"  # a 5xx that is retried (full mailbox) is still a 4.x.x delay
    assert bob["Will-Retry-Until"] == carol["Will-Retry-Until"] == "Sun, 19 Nov 2023 22:13:20 GMT"
    assert bob["Diagnostic-Code"] == "smtp; 451 4.7.1 Greylisted, please try again later"
    assert bob["Remote-MTA"] == "dns; mx.example.net" and bob["Last-Attempt-Date"]
    assert "Subject: Quarterly report" in headers.get_payload()


def test_a_failed_dsn_has_no_will_retry_until() -> None:
    bob = FailedRecipient("bob@example.net", "550 5.1.1 unknown", "5.1.1", "Unknown", None, 1.0)
    data = build_dsn(reporting_mta="relay.test", dsn_from="m@relay.test", sender="a@example.com",
                     queue_id="q", arrival=0.0, original_headers=HEADERS, failed=[bob], now=2.0)  # fmt: skip
    msg = email.message_from_bytes(data, policy=email.policy.default)
    [_per_message, per_recipient] = msg.get_payload()[1].get_payload()
    assert per_recipient["Action"] == "failed" and per_recipient["Will-Retry-Until"] is None
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"


T0 = 1_700_000_000.0


def delivery(seq: str = "001", *, status: str = "deferred", attempts: int = 1,
             last_attempt: float | None = None, next_attempt: float = T0) -> Delivery:  # fmt: skip
    return Delivery(
        id="18a3c1e0f4b0001a2b", seq=seq, recipient=f"r{seq}@example.net", domain="example.net",
        zone="default", status=DeliveryStatus(status), attempts=attempts, created=T0,
        next_attempt=next_attempt, first_failure=None, last_attempt=last_attempt, last_response=None,
        lease_owner=None, lease_until=None,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("last_attempt", "now", "warn"),
    [
        (None, T0 + 10, False),  # first attempt, not queued long enough
        (T0 + 10, T0 + 50, False),
        (T0 + 50, T0 + 70, True),  # the attempt that passes the limit: the one warning
        (T0 + 70, T0 + 130, False),  # already past it at the previous attempt: warned before
        (None, T0 + 90, True),  # first attempt only after the limit (e.g. a future Date:)
        (T0 + 59.9, T0 + 60, True),
    ],
)
def test_exactly_one_attempt_crosses_the_delay_warning(
    last_attempt: float | None, now: float, warn: bool
) -> None:
    assert crossed_delay_warning(delivery(last_attempt=last_attempt), now, 60) is warn
    assert crossed_delay_warning(delivery(last_attempt=last_attempt), now, 0) is False  # 0: off


def test_delayed_notice_is_stored_with_the_deferral_that_crosses_the_limit() -> None:
    config = load_config(overrides={"bounces": {"delay_warning": "1m"}, "queue": {"max_queue_time": "2d"}})
    details = {"enhanced_status": "4.7.1", "mx": "mx.example.net"}
    deferred = DeliveryStatus.DEFERRED
    [notice] = notices_for(
        config, delivery(last_attempt=T0 + 50), deferred, "451 4.7.1 later", details, T0 + 70
    )
    assert notice.kind == DSN_DELAYED
    assert notice.payload["will_retry_until"] == T0 + 2 * 86400
    assert (notice.payload["recipient"], notice.payload["status"]) == ("r001@example.net", "4.7.1")
    assert notices_for(config, delivery(last_attempt=T0 + 70), deferred, "451", details, T0 + 130) == ()
    bounced = notices_for(
        config, delivery(last_attempt=T0 + 50), DeliveryStatus.BOUNCED, "550", details, T0 + 70
    )
    assert [n.kind for n in bounced] == [DSN]  # a bounce is reported as failed, not delayed
    no_dsn = load_config(overrides={"bounces": {"delay_warning": "1m", "dsn": False}})
    assert notices_for(no_dsn, delivery(last_attempt=T0 + 50), deferred, "451", details, T0 + 70) == ()


def entry(kind: str, created: float, seq: str = "001") -> OutboxEntry:
    return OutboxEntry(oid=1, kind=kind, message_id="18a3c1e0f4b0001a2b", payload={"seq": seq},
                       created=created, attempts=0, next_try=created, last_error=None)  # fmt: skip


def test_bounce_dsn_waits_for_the_first_pass_of_every_recipient() -> None:
    bounced = delivery("001", status="bounced", attempts=1, last_attempt=T0 + 1)
    untried = delivery("002", status="queued", attempts=0)
    entries = [entry(DSN, T0 + 1)]
    assert not dsn_ready(DSN, entries, [bounced, untried], T0 + 30, 0)
    deferred = delivery("002", attempts=1, last_attempt=T0 + 40, next_attempt=T0 + 340)
    assert dsn_ready(DSN, entries, [bounced, deferred], T0 + 41, 0)  # tried once: the pass is over
    delivered = delivery("002", status="delivered", attempts=1)
    assert dsn_ready(DSN, entries, [bounced, delivered], T0 + 41, 0)
    # never beyond the bound, and never for a delivery that will not be tried before it ends
    assert dsn_ready(DSN, entries, [bounced, untried], T0 + 1 + DSN_GROUP_MAX, 0)
    future = delivery("002", status="queued", attempts=0, next_attempt=T0 + 3600)
    assert dsn_ready(DSN, entries, [bounced, future], T0 + 2, 0)


def test_delayed_dsn_waits_for_recipients_about_to_pass_the_limit() -> None:
    warned = delivery("001", attempts=3, last_attempt=T0 + 61, next_attempt=T0 + 121)
    entries = [entry(DSN_DELAYED, T0 + 61)]
    behind = delivery("002", attempts=2, last_attempt=T0 + 45, next_attempt=T0 + 65)
    assert not dsn_ready(DSN_DELAYED, entries, [warned, behind], T0 + 62, 60)
    passed = delivery("002", attempts=3, last_attempt=T0 + 65, next_attempt=T0 + 125)
    assert dsn_ready(DSN_DELAYED, entries, [warned, passed], T0 + 66, 60)
    slow = delivery("002", attempts=2, last_attempt=T0 + 45, next_attempt=T0 + 61 + DSN_GROUP_MAX + 1)
    assert dsn_ready(DSN_DELAYED, entries, [warned, slow], T0 + 62, 60)  # not due within the bound


@pytest.mark.parametrize(
    ("attempts", "delay"), [(1, 5), (2, 10), (3, 20), (12, 10240), (13, 10800), (40, 10800)]
)
def test_webhook_retry_backoff(attempts: int, delay: float) -> None:
    assert retry_delay(attempts, 3 * 3600) == delay


def test_webhook_signature_is_hmac_sha256_hex() -> None:
    expected = "5910e62016ef5034272c926c27071992a465c2335cecf41851bda071577f4f6d"
    assert signature("s3cret", b'{"a":1}') == expected
