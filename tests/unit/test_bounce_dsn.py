"""DSN construction (RFC 3464), read back with Python's email package."""

from __future__ import annotations

import email
import email.policy

import pytest

from zonerelay.bounces.dsn import FailedRecipient, build_dsn, dsn_status, should_send_dsn
from zonerelay.bounces.notify import retry_delay, signature

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


@pytest.mark.parametrize(
    ("attempts", "delay"), [(1, 5), (2, 10), (3, 20), (12, 10240), (13, 10800), (40, 10800)]
)
def test_webhook_retry_backoff(attempts: int, delay: float) -> None:
    assert retry_delay(attempts, 3 * 3600) == delay


def test_webhook_signature_is_hmac_sha256_hex() -> None:
    expected = "5910e62016ef5034272c926c27071992a465c2335cecf41851bda071577f4f6d"
    assert signature("s3cret", b'{"a":1}') == expected
