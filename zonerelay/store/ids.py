"""Queue ids in ZoneMTA's form and delivery sequence numbers.

A queue id is 18 lowercase hex characters: the milliseconds since the epoch as 11 hex digits
(good until the year 10889) followed by 7 hex digits of a counter that starts at a random value
(one of 2**27, the lower half of its range) in each new millisecond and counts up within it. Ids
sort by creation time to the millisecond and are strictly increasing within one process (a clock
that steps back keeps the last millisecond and counts on). Two processes collide only if, in the
same millisecond, one counts into the other's random start: negligible at queue rates.
"""

from __future__ import annotations

import os
import re
import threading
import time

_COUNTER_BITS = 28
_COUNTER_MAX = (1 << _COUNTER_BITS) - 1
_START_BITS = _COUNTER_BITS - 1  # random start in the lower half leaves room to count up
_ID_RE = re.compile(r"[0-9a-f]{18}")

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def _random_start() -> int:
    return int.from_bytes(os.urandom(4), "big") >> (32 - _START_BITS)


def _reset_after_fork() -> None:
    global _last_ms, _counter, _lock
    _lock = threading.Lock()
    _last_ms = 0
    _counter = 0


os.register_at_fork(after_in_child=_reset_after_fork)


def new_queue_id() -> str:
    """A new 18-hex-digit queue id, time-ordered and unique."""
    global _last_ms, _counter
    now_ms = time.time_ns() // 1_000_000
    with _lock:
        if now_ms > _last_ms:
            _last_ms = now_ms
            _counter = _random_start()
        else:
            # same millisecond, or the clock stepped back: keep counting from the last id
            _counter += 1
            if _counter > _COUNTER_MAX:
                _last_ms += 1
                _counter = _random_start()
        return f"{_last_ms:011x}{_counter:07x}"


def is_queue_id(value: str) -> bool:
    """True for a string in the form new_queue_id() produces."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def seq(n: int) -> str:
    """Delivery sequence string for the n-th recipient (from 1): "001", "002", ..., "1000"."""
    if n < 1:
        raise ValueError("delivery sequence numbers start at 1")
    return f"{n:03d}"


def queue_id_time(value: str) -> float:
    """The unix time (seconds) encoded in a queue id."""
    return int(value[:11], 16) / 1000.0
