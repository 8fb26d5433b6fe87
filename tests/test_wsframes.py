"""The link's frame codec against frames built by another implementation (gevent-websocket's,
the simulator's server side) and against websocket-client's own client frames."""
from __future__ import annotations

import os

import pytest
import websocket
from geventwebsocket.websocket import Header, WebSocket

from buidl_edge.socketmode import wsframes


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    return Header.encode_header(fin, opcode, b"", len(payload), 0) + payload


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 300_000])
def test_every_length_form_reads_back_whole_even_a_byte_at_a_time(size: int) -> None:
    payload = os.urandom(size)
    data = server_frame(WebSocket.OPCODE_TEXT, payload)
    assert wsframes.FrameParser().feed(data) == [(wsframes.OP_TEXT, payload)]
    parser, got = wsframes.FrameParser(), []
    step = max(1, len(data) // 97)
    for i in range(0, len(data), step):
        got += parser.feed(data[i:i + step])
    assert got == [(wsframes.OP_TEXT, payload)]


def test_many_frames_in_one_read_come_out_in_order_with_control_frames_between_fragments() -> None:
    data = (server_frame(1, b"one") + server_frame(1, b"tw", fin=False) + server_frame(9, b"hi")
            + server_frame(0, b"o") + server_frame(10, b"") + server_frame(8, b"\x03\xe8"))
    assert wsframes.FrameParser().feed(data) == [(1, b"one"), (9, b"hi"), (1, b"two"), (10, b""), (8, b"\x03\xe8")]


@pytest.mark.parametrize("data", [
    server_frame(0x3, b"x"),                                    # reserved opcode
    server_frame(0, b"x"),                                      # continuation of nothing
    server_frame(1, b"a", fin=False) + server_frame(1, b"b"),   # a new message inside a fragmented one
    server_frame(9, b"x" * 126),                                # oversized control frame
])
def test_broken_framing_is_an_error_not_a_guess(data: bytes) -> None:
    with pytest.raises(wsframes.FrameError):
        wsframes.FrameParser().feed(data)


def test_an_endless_message_is_refused_before_it_is_buffered() -> None:
    parser = wsframes.FrameParser(max_message=1000)
    with pytest.raises(wsframes.FrameError):
        parser.feed(Header.encode_header(True, 1, b"", 5000, 0))  # the header alone says too much


@pytest.mark.parametrize("size", [0, 3, 4, 125, 126, 70_000])
def test_client_frames_are_masked_and_decode_as_websocket_client_decodes_its_own(size: int) -> None:
    payload = os.urandom(size)
    ours = wsframes.encode(wsframes.OP_TEXT, payload)
    assert ours[1] & 0x80  # masked, as RFC 6455 requires of a client
    reference = websocket.ABNF.create_frame(payload, websocket.ABNF.OPCODE_TEXT).format()
    assert len(ours) == len(reference)
    assert wsframes.FrameParser().feed(ours) == [(wsframes.OP_TEXT, payload)]
