"""Events are small immutable values, validated when built."""

from __future__ import annotations

import dataclasses

import pytest

from zonerelay.smtp.events import (
    NEED_DATA,
    PAUSED,
    AuthAttempt,
    DataChunk,
    DataRejected,
    EndOfData,
    MailFrom,
    RcptTo,
)
from zonerelay.smtp.replies import R


def test_events_are_frozen() -> None:
    event = EndOfData(3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.size = 4  # type: ignore[misc]


def test_sentinels_print_as_their_names() -> None:
    assert repr(NEED_DATA) == "NEED_DATA" and repr(PAUSED) == "PAUSED"


@pytest.mark.parametrize(
    "build",
    [
        lambda: DataChunk(b""),
        lambda: EndOfData(-1),
        lambda: MailFrom("a@b", {}, size=-1),
        lambda: RcptTo(""),
        lambda: DataRejected(R.OK),
    ],
)
def test_invalid_events_cannot_be_built(build: object) -> None:
    with pytest.raises(ValueError):
        build()  # type: ignore[operator]


def test_passwords_stay_out_of_reprs() -> None:
    assert "s3cret" not in repr(AuthAttempt("PLAIN", "alice", "s3cret"))


def test_mail_from_is_hashable_despite_its_params() -> None:
    assert hash(MailFrom("a@b", {"SIZE": "1"}, 1)) == hash(MailFrom("a@b", {"SIZE": "2"}, 1))
