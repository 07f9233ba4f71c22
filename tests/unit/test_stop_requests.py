"""``up``'s stop signals (system_under_test.launcher._StopRequests): the raise from the signal
handler can be lost when the signal lands while a weakref callback runs (Python prints
"Exception ignored in" and goes on; a CI run lost a SIGINT inside importlib's module-lock
callback this way and ``up`` finished starting the cluster). The signal is kept, and the next
step raises it."""

from __future__ import annotations

import gc
import signal
import weakref

import pytest

from system_under_test.launcher import Interrupted, _StopRequests


class _Target:
    pass


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the drop itself
def test_a_raise_lost_in_a_weakref_callback_is_raised_by_the_next_check():
    stops = _StopRequests()
    before = signal.getsignal(signal.SIGINT)
    with stops.owning_children():
        target = _Target()
        ref = weakref.ref(target, lambda _: stops.handle(signal.SIGINT, None))
        del target
        gc.collect()  # the callback ran; its Interrupted was printed and dropped
        assert ref() is None
        assert stops.pending == signal.SIGINT
        with pytest.raises(Interrupted) as caught:
            stops.check()
        assert caught.value.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is before  # release() put the handlers back


def test_a_deferred_step_finishes_then_raises_and_a_step_after_a_signal_never_starts():
    stops = _StopRequests()
    ran = []
    with stops.owning_children():
        with pytest.raises(Interrupted):
            with stops.deferred():
                stops.handle(signal.SIGTERM, None)  # deferred: kept, not raised here
                ran.append("finished")
        assert ran == ["finished"]
        with pytest.raises(Interrupted):
            with stops.deferred():
                ran.append("started")
    assert ran == ["finished"]


def test_owning_children_starts_without_a_signal_and_check_passes():
    stops = _StopRequests()
    stops.pending = signal.SIGHUP  # left from an earlier use
    with stops.owning_children():
        stops.check()
        with stops.deferred():
            pass
