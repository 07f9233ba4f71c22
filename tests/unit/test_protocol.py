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
