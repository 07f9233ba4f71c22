"""What the gateway's connection cap counts (:class:`system_under_test.gateway.http.HttpProtocol`
with a fake transport): a connection the server closed stops counting at once when nothing is
left to send, so a client that reads a ``Connection: close`` answer and connects again is not
refused at the cap by its own old connection."""

from __future__ import annotations

from system_under_test.gateway.http import (
    DEFAULT_LIMITS,
    ConnectionStates,
    HttpProtocol,
    json_response,
)


class FakeTransport:
    def __init__(self, buffered: int = 0) -> None:
        self.buffered, self.written = buffered, b""
        self.closed = self.aborted = False

    def get_extra_info(self, name: str) -> None:
        return None

    def write(self, data: bytes) -> None:
        self.written += data

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


async def handler(request):  # never called: the tests write answers directly
    raise AssertionError(request)


def connected(transport: FakeTransport) -> tuple[HttpProtocol, ConnectionStates]:
    states = ConnectionStates()
    conn = HttpProtocol(handler, DEFAULT_LIMITS, None, states)
    conn.connection_made(transport)  # type: ignore[arg-type]
    assert conn in states.open and conn in states.idle
    return conn, states


def test_a_connection_closed_after_its_answer_stops_counting_at_once():
    transport = FakeTransport()
    conn, states = connected(transport)
    conn._write(json_response(200, {"alive": True}), keep_alive=False)
    assert transport.closed and transport.written.startswith(b"HTTP/1.1 200")
    assert conn not in states.open and conn not in states.idle
    conn.connection_lost(None)  # later, from the loop: forgetting twice is harmless
    assert not states.open


def test_a_connection_with_answers_still_queued_counts_until_it_is_lost():
    transport = FakeTransport(buffered=4096)  # the client is not reading: the descriptor stays
    conn, states = connected(transport)
    conn._write(json_response(200, {"alive": True}), keep_alive=False)
    assert transport.closed and conn in states.open
    conn.connection_lost(None)
    assert conn not in states.open


def test_a_connection_closed_now_with_unsent_answers_is_aborted_and_uncounted():
    transport = FakeTransport(buffered=4096)
    conn, states = connected(transport)
    conn.close_now()
    assert transport.aborted and conn not in states.open


def test_a_kept_alive_connection_still_counts():
    transport = FakeTransport()
    conn, states = connected(transport)
    conn._write(json_response(200, {"alive": True}), keep_alive=True)
    assert not transport.closed and conn in states.open
