"""The framed protocol's codec: round-trips and truncated frames (the client and server on a real
socket: tests/integration/test_protocol_client.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from system_under_test import protocol


@given(
    f=hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=3, max_side=5)),
    i=hnp.arrays(np.int64, hnp.array_shapes(min_dims=1, max_dims=2, max_side=5)),
    op=st.text(max_size=10),
)
@settings(max_examples=60, deadline=None)
def test_encode_decode_round_trip(f, i, op):
    frame = protocol.encode({"id": 3, "op": op}, {"f": f, "i": i})
    msg = protocol.decode_body(frame[4:])
    assert msg.header == {"id": 3, "op": op}
    np.testing.assert_array_equal(msg.tensors["f"], f)
    np.testing.assert_array_equal(msg.tensors["i"], i)
    assert msg.tensors["f"].shape == f.shape


def test_truncated_frame_is_a_protocol_error():
    frame = protocol.encode({"id": 1}, {"x": np.ones(4, np.float32)})
    with pytest.raises(protocol.ProtocolError, match="runs past the frame end"):
        protocol.decode_body(frame[4:-3])


class _Recorder:
    """A transport that keeps what is written to it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default=None):
        return default


def _frames(data: bytes) -> list[protocol.Message]:
    out, pos = [], 0
    while pos < len(data):
        (length,) = protocol._HLEN.unpack_from(data, pos)
        out.append(protocol.decode_body(data[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    return out


def test_the_answers_to_one_read_go_out_in_one_write_in_order():
    def handler(msg: protocol.Message) -> protocol.Reply:
        if msg.header["op"] == "bad":
            raise protocol.RemoteError("bad_request", "no such op")
        return {"echo": msg.header["id"]}, {"x": msg.tensors["x"] * 2}

    server = protocol._ServerProtocol(handler)
    transport = _Recorder()
    server.connection_made(transport)  # type: ignore[arg-type]
    ops = ["echo", "bad", "echo"]
    reads = b"".join(
        protocol.encode({"id": i, "op": op}, {"x": np.arange(3, dtype=np.float32) + i})
        for i, op in enumerate(ops)
    )
    server.data_received(reads)
    assert len(transport.writes) == 1
    answers = _frames(transport.writes[0])
    assert [a.header["id"] for a in answers] == [0, 1, 2]
    assert [a.header["ok"] for a in answers] == [True, False, True]
    assert answers[1].header["code"] == "bad_request"
    np.testing.assert_array_equal(answers[2].tensors["x"], (np.arange(3) + 2) * 2)
    server.data_received(protocol.encode({"id": 3, "op": "echo"}, {"x": np.zeros(1, np.float32)}))
    assert len(transport.writes) == 2 and _frames(transport.writes[1])[0].header["id"] == 3
