"""Hardening, memory and protocol: fragment bounds, RFC 6455 to the letter, a slow client told why,
a healthy client behind a slow handler kept, in every server setup.

The Autobahn|Testsuite case numbers are named where a test reproduces one.
"""

from __future__ import annotations

from collections.abc import Callable

import websocket

from tests.conftest import Server
from tests.rawws import CLOSE, CONT, PING, PONG, TEXT, RawClient, close_payload, frame
from tests.test_lifecycle import slow_client
from tests.test_rfc6455 import Cases, expect_echo, expect_failure
from tests.waiting import WAIT

PROTOCOL_ERROR, INVALID_DATA, TOO_BIG = 1002, 1007, 1009

# ---------------------------------------------------------------------------------- fragments and read_limit


def test_endless_empty_continuations_are_closed_1009(serve: Callable[..., Server]) -> None:
    """Empty continuation frames never grow a message's payload; they are bounded by read_limit all the same."""
    limit = 1 << 14
    server = serve(read_limit=limit, heartbeat_interval=None)
    cases = Cases(server)
    client = cases.open()
    client.send(frame(TEXT, b"start", fin=False))
    empty = frame(CONT, b"", fin=False)
    sent = 0
    try:
        while sent < limit * 4:  # far past any fair share of read_limit; the server closes long before
            client.send(empty * 256)
            sent += 256
    except OSError:
        pass  # the server closed while we were still sending: what we want
    got = client.expect_close()
    assert got.close_code == TOO_BIG, (got.close_code, got.close_reason)
    info = cases.session_record()
    assert (info["code"], info["initiator"]) == (TOO_BIG, "error"), info
    client.close()


def test_a_message_of_tiny_fragments_is_charged_for_each_fragment(serve: Callable[..., Server]) -> None:
    """Half a million two-byte fragments of a message under read_limit: refused 1009, not held.

    Its payload (1,000,000 bytes) is under the 1 MiB limit; the fragments' own cost is not.
    """
    server = serve(heartbeat_interval=None)
    cases = Cases(server)
    client = cases.open()
    client.send(frame(TEXT, b"ab", fin=False))
    chunk = frame(CONT, b"ab", fin=False) * 1000
    try:
        for _ in range(500):
            client.send(chunk)
        client.send(frame(CONT, b"ab"))
    except OSError:
        pass
    got = client.expect_close()
    assert got.close_code == TOO_BIG, (got.close_code, got.close_reason)
    client.close()
    cases.session_record()


# ---------------------------------------------------------------------------------- RFC 6455 to the letter


def test_close_inside_a_fragmented_message_is_a_clean_close(serve: Callable[..., Server]) -> None:
    """Autobahn 7.1.5: a fragment, a close, another fragment: the close is echoed with 1000, nothing else."""
    server = serve(heartbeat_interval=None)
    cases = Cases(server)
    client = cases.open()
    client.send(frame(TEXT, b"fragment1", fin=False) + frame(CLOSE, close_payload(1000)) + frame(CONT, b"fragment2"))
    got = client.recv_frame()
    assert (got.opcode, got.close_code) == (CLOSE, 1000), (got.opcode, got.payload)
    assert client.at_eof()
    assert client.buf == b""
    info = cases.session_record()
    assert (info["code"], info["initiator"], info["expected"]) == (1000, "client", True), info


#: a valid message, then (in the same write) a frame that breaks the protocol, then a ping
PIPELINED = {
    "3.2 rsv=2": frame(TEXT, b"Hello, world!") + frame(TEXT, b"Hello, world!", rsv=2) + frame(PING, b""),
    "3.3 rsv=3": frame(TEXT, b"Hello, world!") + frame(TEXT, b"Hello, world!", rsv=3) + frame(PING, b""),
    "3.4 rsv=4": frame(TEXT, b"Hello, world!") + frame(TEXT, b"Hello, world!", rsv=4) + frame(PING, b""),
    "4.1.3 opcode 5": frame(TEXT, b"Hello, world!") + frame(0x5) + frame(PING, b""),
    "4.1.4 opcode 6": frame(TEXT, b"Hello, world!") + frame(0x6, b"Hello, world!") + frame(PING, b""),
    "4.1.5 opcode 7": frame(TEXT, b"Hello, world!") + frame(0x7, b"Hello, world!") + frame(PING, b""),
    "4.2.3 opcode 13": frame(TEXT, b"Hello, world!") + frame(0xD) + frame(PING, b""),
    "4.2.4 opcode 14": frame(TEXT, b"Hello, world!") + frame(0xE, b"Hello, world!") + frame(PING, b""),
    "4.2.5 opcode 15": frame(TEXT, b"Hello, world!") + frame(0xF, b"Hello, world!") + frame(PING, b""),
}


def test_a_valid_message_before_a_bad_frame_in_one_read_is_answered_first(serve: Callable[..., Server]) -> None:
    """Autobahn 3.2-3.4, 4.1.3-4.1.5, 4.2.3-4.2.5, 5.15: the echo, then close 1002; no pong for the later ping."""
    server = serve(heartbeat_interval=None)
    cases = Cases(server)
    table = dict(PIPELINED)
    table["5.15 orphan continuation"] = (
        frame(TEXT, b"fragment1", fin=False)
        + frame(CONT, b"fragment2")
        + frame(CONT, b"fragment3", fin=False)
        + frame(TEXT, b"fragment4")
    )
    for name, data in table.items():
        client = None
        with cases.case(name):
            client = cases.open()
            client.send(data)
            expect_echo(client, TEXT, b"fragment1fragment2" if name.startswith("5.15") else b"Hello, world!")
            expect_failure(cases, client, PROTOCOL_ERROR)
        if client is not None:
            client.close()
            cases.session_record()
    cases.report()


def _wait_for_failure(client: RawClient, code: int) -> None:
    """The close frame arrives without the client sending anything more."""
    got = client.recv_frame()
    while got.opcode in (PING, PONG):
        got = client.recv_frame()
    assert (got.opcode, got.close_code) == (CLOSE, code), (got.opcode, got.payload[:60])


KOSME = bytes.fromhex("cebae1bdb9cf83cebcceb5")
EDITED = bytes.fromhex("656469746564")


def test_invalid_utf8_fails_at_the_first_bad_fragment(serve: Callable[..., Server]) -> None:
    """Autobahn 6.4.1-6.4.2: the connection fails on the invalid fragment, before the message's last one is sent."""
    server = serve(heartbeat_interval=None)
    cases = Cases(server)
    table = {
        "6.4.1 code point above U+10FFFF": (KOSME, bytes.fromhex("f4908080"), EDITED),
        "6.4.2 one octet makes it invalid": (KOSME + b"\xf4", b"\x90", b"\x80\x80" + EDITED),
    }
    for name, (part1, part2, _part3) in table.items():
        client = None
        with cases.case(name):
            client = cases.open()
            client.send(frame(TEXT, part1, fin=False))
            client.send(frame(CONT, part2, fin=False))
            _wait_for_failure(client, INVALID_DATA)  # part3 is never sent
        if client is not None:
            client.close()
            cases.session_record()
    cases.report()


def test_invalid_utf8_fails_at_the_first_bad_chunk_of_one_frame(serve: Callable[..., Server]) -> None:
    """Autobahn 6.4.3-6.4.4: one frame sent in chops fails on the invalid chop, before the frame is complete."""
    server = serve(heartbeat_interval=None)
    cases = Cases(server)
    table = {
        "6.4.3 code point above U+10FFFF": (KOSME, bytes.fromhex("f4908080"), EDITED),
        "6.4.4 one octet makes it invalid": (KOSME + b"\xf4", b"\x90", b"\x80\x80" + EDITED),
    }
    for name, (part1, part2, part3) in table.items():
        client = None
        with cases.case(name):
            client = cases.open()
            whole = frame(TEXT, part1 + part2 + part3)
            header = 2 + 4  # short payload: no extended length; then the mask key
            client.send(whole[: header + len(part1)])
            client.send(whole[header + len(part1) : header + len(part1) + len(part2)])
            _wait_for_failure(client, INVALID_DATA)  # the frame's last bytes are never sent
        if client is not None:
            client.close()
            cases.session_record()
    cases.report()


def test_valid_text_arriving_in_chops_is_not_refused(serve: Callable[..., Server]) -> None:
    """The early check must not refuse a character split between two reads, in a frame or a continuation."""
    server = serve(heartbeat_interval=None)
    cases = Cases(server)
    client = cases.open()
    text = ("κόσμε €𝄞 " * 50).encode()
    whole = frame(TEXT, text)
    for cut in (9, 10, 11, 200, len(whole) - 1):  # inside the header's extended length, mid-character, the end
        client.send(whole[:cut])
        client.send(whole[cut:])
        expect_echo(client, TEXT, text)
    first, rest = text[:301], text[301:]
    two = frame(TEXT, first, fin=False) + frame(CONT, rest)
    client.send(two[:-5])
    client.send(two[-5:])
    expect_echo(client, TEXT, text)
    client.close()


# ---------------------------------------------------------------------------------- a slow client is told why


def test_a_slow_client_that_reads_again_gets_its_close_frame(serve: Callable[..., Server]) -> None:
    """Under Backpressure.CLOSE the client that stopped reading finds 1008 "send queue full" once it reads."""
    server = serve(send_queue_size=16, write_timeout=60, heartbeat_interval=None)
    slow, slow_id = slow_client(server)
    for _round in range(400):
        server.control("broadcast", size=65536, count=8)
        if server.control("stats")["backpressure_closes"]:
            break
    stats = server.control("stats")
    assert (stats["backpressure_closes"], stats["queue_drops"]) == (1, 0)  # a close, not a drop
    got = slow.recv_frame()
    frames = 1
    while got.opcode != CLOSE:
        got = slow.recv_frame()
        frames += 1
    assert (got.close_code, got.close_reason) == (1008, "send queue full"), (got.close_code, got.close_reason, frames)
    assert slow.at_eof()
    [info] = [d for d in server.disconnects() if d["session"] == slow_id]
    assert (info["code"], info["reason"], info["initiator"]) == (1008, "send queue full", "backpressure")


# ---------------------------------------------------------------------------------- heartbeat behind a slow handler


def test_a_client_that_answers_pings_survives_a_slow_handler(serve: Callable[..., Server]) -> None:
    """heartbeat 1 s, pong timeout 1 s, a 5 s handler: the reply comes; the client is not closed 1011."""
    server = serve(heartbeat_interval=1, pong_timeout=1)
    ws = websocket.create_connection(server.ws_url, timeout=WAIT)  # answers pings while it waits in recv
    try:
        ws.send("cmd:sleep 5")
        assert ws.recv() == "5"  # the handler's reply, not a close 1011 "ping timeout"
        ws.send("still here")
        assert ws.recv() == "still here"
    finally:
        ws.close()
