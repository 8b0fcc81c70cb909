"""The message assembler (pure): reassembly, the size bound with its per-fragment cost, UTF-8 as it arrives.

What the connection does with its verdicts (close 1009 or 1007, nothing dispatched) is tested
over real sockets in test_e2e_engine.py; here only the assembler's own decisions.
"""

from __future__ import annotations

import pytest
from websockets.exceptions import PayloadTooBig
from websockets.frames import Frame, Opcode

from rtgevent.transport.assembler import FRAGMENT_COST, Assembler

TEXT, BINARY, CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT


def feed_all(assembler: Assembler, *frames: Frame) -> list[str | bytes | None]:
    return [assembler.feed(frame) for frame in frames]


def test_a_one_frame_message_comes_back_whole_and_typed() -> None:
    assembler = Assembler(100)
    assert assembler.feed(Frame(TEXT, "héllo".encode())) == "héllo"
    assert assembler.feed(Frame(BINARY, b"\x00\xff")) == b"\x00\xff"
    assert not assembler.in_progress


def test_fragments_join_in_order_and_only_the_last_one_returns_the_message() -> None:
    assembler = Assembler(100)
    got = feed_all(assembler, Frame(BINARY, b"ab", fin=False), Frame(CONT, b"", fin=False), Frame(CONT, b"cd"))
    assert got == [None, None, b"abcd"]
    assert not assembler.in_progress and assembler.held == 0


def test_a_character_split_across_fragments_is_not_an_error() -> None:
    euro = "€".encode()  # three bytes, one per fragment
    assembler = Assembler(100)
    frames = [Frame(TEXT, euro[:1], fin=False), Frame(CONT, euro[1:2], fin=False), Frame(CONT, euro[2:])]
    assert feed_all(assembler, *frames) == [None, None, "€"]


def test_invalid_utf8_fails_at_the_first_bad_fragment_not_at_the_end() -> None:
    assembler = Assembler(100)
    assert assembler.feed(Frame(TEXT, b"valid ", fin=False)) is None
    with pytest.raises(UnicodeDecodeError):
        assembler.feed(Frame(CONT, b"\xf4\x90\x80\x80", fin=False))  # beyond U+10FFFF, message not over
    assert not assembler.in_progress


def test_a_truncated_character_at_the_end_of_a_text_message_is_invalid() -> None:
    assembler = Assembler(100)
    assembler.feed(Frame(TEXT, b"ok", fin=False))
    with pytest.raises(UnicodeDecodeError):
        assembler.feed(Frame(CONT, "€".encode()[:2]))


def test_invalid_utf8_in_one_frame_is_an_error_too() -> None:
    with pytest.raises(UnicodeDecodeError):
        Assembler(100).feed(Frame(TEXT, b"\xff"))


def test_binary_is_never_decoded() -> None:
    assembler = Assembler(100)
    assert feed_all(assembler, Frame(BINARY, b"\xff", fin=False), Frame(CONT, b"\xfe")) == [None, b"\xff\xfe"]


def test_each_fragment_costs_its_payload_plus_the_fragment_cost() -> None:
    assembler = Assembler(1000)
    assembler.feed(Frame(BINARY, b"x" * 10, fin=False))
    assembler.feed(Frame(CONT, b"", fin=False))
    assert assembler.held == 10 + 2 * FRAGMENT_COST


def test_endless_empty_continuations_reach_the_limit() -> None:
    """Empty fragments never grow the payload; they are bounded all the same."""
    limit = 1 << 10
    assembler = Assembler(limit)
    assembler.feed(Frame(TEXT, b"", fin=False))
    with pytest.raises(PayloadTooBig):
        for _ in range(limit):  # far more than limit / FRAGMENT_COST
            assembler.feed(Frame(CONT, b"", fin=False))
    assert not assembler.in_progress


def test_the_bound_counts_the_whole_message_not_one_fragment() -> None:
    assembler = Assembler(100)
    assembler.feed(Frame(BINARY, b"x" * 50, fin=False))
    with pytest.raises(PayloadTooBig) as caught:
        assembler.feed(Frame(CONT, b"x" * 50))
    assert "exceeds limit of 100 bytes" in str(caught.value)


def test_a_message_that_fits_with_its_fragment_costs_is_accepted() -> None:
    body = 100 - 2 * FRAGMENT_COST
    assembler = Assembler(100)
    frames = [Frame(BINARY, b"x" * (body - 1), fin=False), Frame(CONT, b"y")]
    assert feed_all(assembler, *frames) == [None, b"x" * (body - 1) + b"y"]


def test_without_a_limit_nothing_is_refused() -> None:
    assembler = Assembler(None)
    assembler.feed(Frame(BINARY, b"", fin=False))
    for _ in range(10_000):
        assembler.feed(Frame(CONT, b"", fin=False))
    assert assembler.feed(Frame(CONT, b"end")) == b"end"


def test_after_a_failure_the_next_message_starts_clean() -> None:
    assembler = Assembler(100)
    assembler.feed(Frame(TEXT, b"a", fin=False))
    with pytest.raises(UnicodeDecodeError):
        assembler.feed(Frame(CONT, b"\xff", fin=False))
    assert assembler.feed(Frame(CONT, b"stray")) is None  # the protocol refuses this anyway
    assert assembler.feed(Frame(TEXT, b"next")) == "next"


def test_an_arriving_text_frame_fails_at_its_first_bad_chunk() -> None:
    assembler = Assembler(100)
    assembler.check_arriving(TEXT, True, b"caf\xc3")  # a character cut in two: fine so far
    assembler.check_arriving(TEXT, False, b"\xa9 ")
    with pytest.raises(UnicodeDecodeError):
        assembler.check_arriving(TEXT, False, b"\xff")


def test_an_arriving_continuation_is_checked_from_where_its_message_stands() -> None:
    assembler = Assembler(100)
    assembler.feed(Frame(TEXT, b"x\xe2", fin=False))  # the euro sign's first byte ends this fragment
    assembler.check_arriving(CONT, True, b"\x82")  # its second byte: valid only after the first
    with pytest.raises(UnicodeDecodeError):
        assembler.check_arriving(CONT, False, b"(")  # not its third byte


def test_arriving_binary_is_never_checked() -> None:
    assembler = Assembler(100)
    assembler.check_arriving(BINARY, True, b"\xff\xfe")
    assembler.feed(Frame(BINARY, b"\xff", fin=False))
    assembler.check_arriving(CONT, True, b"\xff")
