"""The autogroup share of a starting server (:mod:`system_under_test.runtime`): the file's text,
and a way back to a full share that waits out the kernel's rate limit instead of leaving a
serving process at nice 19."""

from __future__ import annotations

import pytest

from system_under_test import runtime


@pytest.mark.parametrize(
    ("text", "nice"),
    [("/autogroup-123 nice 19\n", 19), ("/autogroup-7 nice 0", 0), ("", None), ("x nice y", None)],
)
def test_the_autogroup_file_parses(text, nice):
    assert runtime.parse_autogroup(text) == nice


class RateLimited:
    """The autogroup file's write: EAGAIN ``refusals`` times, then it takes."""

    def __init__(self, refusals: int) -> None:
        self.refusals, self.written = refusals, []

    def __call__(self, path: str, text: str) -> None:
        if self.refusals:
            self.refusals -= 1
            raise BlockingIOError(11, "Resource temporarily unavailable")
        self.written.append(text)


def test_a_rate_limited_change_is_tried_again_until_it_takes(monkeypatch):
    fake = RateLimited(refusals=3)
    monkeypatch.setattr(runtime, "_leads_session", lambda: True)
    monkeypatch.setattr(runtime, "_write", fake)
    monkeypatch.setattr(runtime.time, "sleep", lambda s: None)
    assert runtime._set_autogroup_nice(0, "/proc/self/autogroup")
    assert fake.written == ["0"] and fake.refusals == 0


def test_a_change_refused_past_the_retry_time_says_so(monkeypatch):
    fake = RateLimited(refusals=10**9)
    clock = iter(range(0, 10**6, 1))  # a second per look at the clock
    monkeypatch.setattr(runtime, "_leads_session", lambda: True)
    monkeypatch.setattr(runtime, "_write", fake)
    monkeypatch.setattr(runtime.time, "sleep", lambda s: None)
    monkeypatch.setattr(runtime.time, "monotonic", lambda: float(next(clock)))
    assert runtime._set_autogroup_nice(0, "/proc/self/autogroup") is False
    assert fake.written == []


def test_a_server_that_does_not_lead_its_session_leaves_the_autogroup_alone(monkeypatch):
    fake = RateLimited(refusals=0)
    monkeypatch.setattr(runtime, "_leads_session", lambda: False)
    monkeypatch.setattr(runtime, "_write", fake)
    assert runtime._set_autogroup_nice(19, "/proc/self/autogroup") is False
    assert fake.written == []
