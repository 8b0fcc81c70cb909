"""The pure session lifecycle: the transition table and the verdict on how a session ended."""

from __future__ import annotations

import pytest

from rtgevent.lifecycle import (
    TRANSITIONS,
    Closing,
    Ending,
    Event,
    InvalidTransition,
    Lifecycle,
    State,
    disconnect_info,
    kick_initiator,
)
from rtgevent.types import Initiator


def test_a_session_opens_then_ends_and_remembers_it_was_open() -> None:
    """ADMITTED → OPEN → ENDED; was_open tells the end to leave hub and presence."""
    life = Lifecycle(in_band=False)
    assert life.state is State.ADMITTED and not life.authenticating
    life.advance(Event.REGISTERED)
    life.advance(Event.ENDED)
    assert life.state is State.ENDED and life.was_open


def test_in_band_sessions_authenticate_first() -> None:
    """An in-band session waits in AUTHENTICATING, then opens like any other."""
    life = Lifecycle(in_band=True)
    assert life.authenticating
    assert life.advance(Event.AUTHENTICATED) is State.ADMITTED
    assert life.advance(Event.REGISTERED) is State.OPEN


@pytest.mark.parametrize("in_band", [False, True])
def test_a_rejected_session_never_counts_as_open(in_band: bool) -> None:
    """Rejected by on_connect or by a failed rt.auth: its end runs no on_disconnect."""
    life = Lifecycle(in_band=in_band)
    life.advance(Event.REJECTED)
    life.advance(Event.ENDED)
    assert life.state is State.ENDED and not life.was_open


def test_impossible_moves_raise() -> None:
    """A move missing from the table is a framework bug, raised at once."""
    life = Lifecycle(in_band=False)
    life.advance(Event.REGISTERED)
    with pytest.raises(InvalidTransition, match="from open on registered"):
        life.advance(Event.REGISTERED)
    with pytest.raises(InvalidTransition):
        Lifecycle(in_band=False).advance(Event.AUTHENTICATED)
    life.advance(Event.ENDED)
    for event in Event:
        with pytest.raises(InvalidTransition):
            life.advance(event)


def test_every_state_but_ended_can_end() -> None:
    """Whatever the state, the stream ending is a legal move (the client can vanish any time)."""
    assert {state for (state, event) in TRANSITIONS if event is Event.ENDED} == set(State) - {State.ENDED}


def test_our_close_request_decides() -> None:
    """A close we asked for that ran its course: our initiator, code and reason; expected for server closes."""
    info = disconnect_info(
        Ending(Closing(Initiator.SERVER, 4000, "bye", flush=True), received=(1000, ""), sent=(4000, "bye"))
    )
    assert (info.initiator, info.code, info.reason, info.expected) == (Initiator.SERVER, 4000, "bye", True)


@pytest.mark.parametrize(
    ("initiator", "expected"),
    [
        (Initiator.SHUTDOWN, True),
        (Initiator.REPLACED, True),
        (Initiator.HEARTBEAT, False),
        (Initiator.BACKPRESSURE, False),
        (Initiator.ERROR, False),
    ],
)
def test_which_initiators_are_expected(initiator: Initiator, expected: bool) -> None:
    """Shutdown and replace are nobody's alarm; a dead heartbeat, a full queue or an error are."""
    assert disconnect_info(Ending(Closing(initiator, 1011, "x", flush=False))).expected is expected


def test_a_protocol_error_is_the_peers_with_the_code_we_sent() -> None:
    """The peer broke the protocol: initiator error, our close code (1002 when none went out)."""
    bad = ValueError("bad frame")
    sent = disconnect_info(Ending(sent=(1007, "invalid UTF-8"), protocol_error=bad))
    assert (sent.initiator, sent.code, sent.reason, sent.error, sent.expected) == (
        Initiator.ERROR,
        1007,
        "invalid UTF-8",
        bad,
        False,
    )
    assert disconnect_info(Ending(protocol_error=bad)).code == 1002


@pytest.mark.parametrize(("code", "expected"), [(1000, True), (1001, True), (1005, True), (1011, False), (4000, False)])
def test_the_clients_close_frame(code: int, expected: bool) -> None:
    """The client closed: its code and reason; a normal goodbye is expected, an error code is not."""
    info = disconnect_info(Ending(received=(code, "r")))
    assert (info.initiator, info.code, info.reason, info.expected) == (Initiator.CLIENT, code, "r", expected)


def test_a_request_that_met_a_failed_stream_keeps_its_initiator() -> None:
    """An aborted close (the socket failed under it) keeps who asked, with the socket's error."""
    failure = OSError("reset")
    closing = Closing(Initiator.ERROR, 1006, "write timeout", flush=False, abort=True)
    info = disconnect_info(Ending(closing, failure=failure))
    assert (info.initiator, info.code, info.reason, info.error) == (Initiator.ERROR, 1006, "write timeout", failure)


def test_a_plain_drop_is_the_clients_and_expected() -> None:
    """No close frame either way: the client dropped the connection (1006), an ordinary network event."""
    failure = ConnectionResetError()
    info = disconnect_info(Ending(failure=failure))
    assert (info.initiator, info.code, info.expected, info.error) == (Initiator.CLIENT, 1006, True, failure)


def test_kicks_from_the_broker() -> None:
    """4001 through the broker is the replace policy; any other kick code is a server close."""
    assert kick_initiator(4001) is Initiator.REPLACED
    assert kick_initiator(1008) is Initiator.SERVER
