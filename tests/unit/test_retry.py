import pytest

from zonerelay.delivery.retry import RetryPolicy

POLICY = RetryPolicy(defer_minutes=[5, 7, 8, 25, 75, 120, 240], max_queue_time=5 * 86400)


@pytest.mark.parametrize(
    ("deferrals", "minutes"),
    [(1, 5), (2, 7), (3, 8), (4, 25), (5, 75), (6, 120), (7, 240), (8, 240), (50, 240)],
)
def test_schedule_follows_the_table_then_repeats_the_last_step(deferrals: int, minutes: float) -> None:
    assert POLICY.next_attempt(deferrals=deferrals, queued_at=0, now=1000) == 1000 + minutes * 60


def test_last_attempt_is_clamped_to_the_deadline() -> None:
    deadline = 5 * 86400
    assert POLICY.next_attempt(deferrals=9, queued_at=0, now=deadline - 60) == deadline


def test_past_the_maximum_queue_time_the_delivery_bounces() -> None:
    assert POLICY.next_attempt(deferrals=3, queued_at=0, now=5 * 86400) is None
    assert POLICY.next_attempt(deferrals=3, queued_at=0, now=6 * 86400) is None
