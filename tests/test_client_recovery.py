"""Reconnect and lossless recovery in the clients (SPEC sections 12-14): rtgevent.client and rt.test_client.

Over real sockets, a TCP hop (`Forwarder`) sits between the client and an in-process server
and can cut every connection through it: both sockets are reset (SO_LINGER 0), so neither
side sees a close frame -- the client sees a dropped connection and the server an abrupt
end, as with a network that fails.  While cut, the hop resets new connections too, so the
client keeps trying until the test restores it.  What the server sends meanwhile is really
missed: the tests wait until the server has ended the session before publishing.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from gevent.event import Event
from gevent.server import StreamServer

from rtgevent import (
    ChannelOptions,
    Config,
    DisconnectInfo,
    Identity,
    InBandAuthenticator,
    Message,
    Realtime,
    Session,
    SessionClosed,
    StaticTokenAuthenticator,
    Unauthorized,
)
from rtgevent.client import Client, ClientClosed, Position, Positions, Reconnect, connect
from rtgevent.errors import InvalidOption
from tests.waiting import WAIT, wait_until

ANN = Identity("ann", "acme")
TOKEN = "ann-token"
#: quick retries: the tests wait for events, never for the delays
QUICK = Reconnect(start=0.02, cap=0.2)


# ---------------------------------------------------------------------- the cuttable hop


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset: no FIN, no close frame, unread data thrown away."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)  # an orderly end goes through as one
    except OSError:
        pass  # cut


class Forwarder:
    """127.0.0.1:<port> piped to a server; `cut` resets every connection and refuses new ones until `restore`."""

    def __init__(self, port: int) -> None:
        self._target = ("127.0.0.1", port)
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self.refusing = False
        self.accepted = 0
        self._server = StreamServer(("127.0.0.1", 0), self._handle)
        self._server.start()

    def url(self, path: str = "/") -> str:
        return f"ws://127.0.0.1:{self._server.server_port}{path}"

    def _handle(self, downstream: socket.socket, address: Any) -> None:
        self.accepted += 1
        if self.refusing:
            _reset(downstream)
            return
        upstream = socket.create_connection(self._target)
        self._pairs.append((downstream, upstream))
        gevent.joinall([gevent.spawn(_pipe, downstream, upstream), gevent.spawn(_pipe, upstream, downstream)])

    def cut(self) -> None:
        self.refusing = True
        pairs, self._pairs = self._pairs, []
        for downstream, upstream in pairs:
            _reset(downstream)
            _reset(upstream)

    def restore(self) -> None:
        self.refusing = False

    def stop(self) -> None:
        self.cut()
        self._server.stop(timeout=5)


# ---------------------------------------------------------------------- fixtures


def make_rt(*, authenticator: Any = None, small_personal: bool = False, **config: Any) -> Realtime:
    """Channels ``hist:`` (history 1000) and ``small:`` (history 10), personal streams, and the test routes."""
    size = 5 if small_personal else 100
    rt = Realtime(
        Config(identity_history_size=size, identity_history_ttl=60, **config),
        authenticator=authenticator or StaticTokenAuthenticator(TOKEN, ANN),
    )
    rt.channel_namespace("hist:", ChannelOptions(history_size=1000, history_ttl=60))
    rt.channel_namespace("small:", ChannelOptions(history_size=10, history_ttl=60))

    @rt.on_subscribe
    def allow(session: Session, channel: str) -> None:
        if channel.startswith("secret:"):
            raise Unauthorized("no")

    @rt.route("echo")
    def echo(session: Session, msg: Message) -> Any:
        return msg.data

    @rt.route("replay")
    def replay(session: Session, msg: Message) -> Any:
        """Send envelopes as given, stream metadata included: what a duplicate looks like on the wire."""
        for route, data, metadata in msg.data:
            session.send_message(Message(route, data, metadata=metadata))
        return "sent"

    return rt


@pytest.fixture
def serve(serve_realtime: Callable[[Any], Any]) -> Iterator[Callable[[Realtime], Forwarder]]:
    """``serve(rt)``: ``rt`` served in-process, behind a `Forwarder`; the hops stop after the test."""
    hops: list[Forwarder] = []

    def factory(rt: Realtime) -> Forwarder:
        hop = Forwarder(serve_realtime(rt).port)
        hops.append(hop)
        return hop

    yield factory
    for hop in hops:
        hop.stop()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    """Clients to close after the test (their reader greenlets end with them)."""
    made: list[Client] = []
    yield made
    for client in made:
        client.close()


def reading(client: Client) -> gevent.Greenlet:
    """A greenlet dispatching the client's messages to its handlers until it closes."""

    def run() -> ClientClosed | None:
        try:
            client.run()
        except ClientClosed as exc:
            return exc
        return None

    return gevent.spawn(run)


def pump(client: Client, predicate: Callable[[], bool], what: str) -> None:
    """Dispatch the client's messages to its handlers, in this greenlet, until ``predicate()``."""

    def step() -> bool:
        client.run(timeout=0.05)
        return predicate()

    wait_until(step, what)


def cut_until_the_server_noticed(rt: Realtime, hop: Forwarder) -> None:
    hop.cut()
    wait_until(lambda: not rt.sessions(), "the server to end the cut session")


def publish(rt: Realtime, channel: str, numbers: range) -> None:
    for n in numbers:
        rt.publish(channel, "pub", n)


# ---------------------------------------------------------------------- rtgevent.client


def test_a_cut_client_gets_exactly_the_publications_it_missed_then_live_ones(
    serve: Callable[[Realtime], Forwarder], clients: list[Client]
) -> None:
    """Cut (not closed), 100 publications meanwhile, reconnect: those 100 once each, in order, then live; recovered."""
    rt = make_rt()
    gone: list[DisconnectInfo] = []

    @rt.on_disconnect
    def record(session: Session, info: DisconnectInfo) -> None:
        gone.append(info)

    hop = serve(rt)
    client = connect(hop.url(), TOKEN, timeout=WAIT, reconnect=QUICK)
    clients.append(client)
    seen: list[Any] = []
    answers: list[Any] = []
    client.on("rt.subscribed", lambda msg: answers.append(msg.data))
    first = client.subscribe("hist:room", lambda msg: seen.append(msg.data))
    assert first["recovered"] is False and first["offset"] == 0  # nothing asked for, nothing yet
    reader = reading(client)

    publish(rt, "hist:room", range(1, 4))
    wait_until(lambda: len(seen) == 3, lambda: f"3 live publications, saw {seen}")
    cut_until_the_server_noticed(rt, hop)
    wait_until(lambda: gone, "on_disconnect of the cut session")
    assert (gone[0].initiator, gone[0].code) == ("client", 1006)  # an abrupt end: no close frame came
    publish(rt, "hist:room", range(4, 104))  # 100 publications nobody receives
    assert seen == [1, 2, 3]
    hop.restore()

    wait_until(lambda: len(answers) == 2, "the answer to the subscription renewed after the reconnect")
    assert answers[1]["recovered"] is True and answers[1]["missed"] == 100
    assert seen == list(range(1, 104))  # the missed ones came before the answer
    publish(rt, "hist:room", range(104, 109))
    wait_until(lambda: len(seen) == 108, lambda: f"the live publications after the reconnect, saw {len(seen)}")
    assert seen == list(range(1, 109))
    assert client.reconnects == 1
    assert client.position("hist:room") == (108, answers[1]["epoch"])
    client.close()
    assert isinstance(reader.get(timeout=WAIT), ClientClosed)


@pytest.mark.parametrize("in_band", [False, True], ids=["since_query", "rt_auth_since"])
def test_the_personal_stream_is_recovered_after_a_cut(
    serve: Callable[[Realtime], Forwarder], clients: list[Client], in_band: bool
) -> None:
    """send_to_identity while its only client is away reaches it after the reconnect, once each, in order."""

    def verify(token: object) -> Identity:
        if token != TOKEN:
            raise Unauthorized("bad token")
        return ANN

    rt = make_rt(authenticator=InBandAuthenticator(verify) if in_band else None)
    resumes: list[Any] = []

    @rt.on_connect
    def record(session: Session) -> None:
        resumes.append(session.resume)

    hop = serve(rt)
    # a since given in the URL is replaced by the client's own on reconnect
    client = connect(hop.url("/?since=7:stale&x=1"), TOKEN, timeout=WAIT, reconnect=QUICK, in_band=in_band)
    clients.append(client)
    seen: list[Any] = []
    personal: list[Any] = []
    client.on("dm", lambda msg: seen.append(msg.data))
    client.on("rt.personal", lambda msg: personal.append(msg.data))
    reader = reading(client)
    wait_until(lambda: personal, "rt.personal on the first connection")

    for n in range(1, 4):
        rt.send_to_identity("acme", "ann", "dm", n)
    wait_until(lambda: len(seen) == 3, lambda: f"3 live messages, saw {seen}")
    stood = client.position()
    assert stood is not None and stood.offset == 3
    cut_until_the_server_noticed(rt, hop)
    for n in range(4, 14):
        rt.send_to_identity("acme", "ann", "dm", n)  # kept in the personal stream: nobody is online
    hop.restore()

    wait_until(lambda: len(personal) == 2, "rt.personal after the reconnect")
    assert personal[1]["recovered"] is True and personal[1]["missed"] == 10
    assert seen == list(range(1, 14))
    assert resumes[-1] == (3, stood.epoch)  # where the client stood, in the form its auth carries it
    rt.send_to_identity("acme", "ann", "dm", 14)
    wait_until(lambda: len(seen) == 14, "the live message after the reconnect")
    assert seen == list(range(1, 15))
    client.close()
    reader.get(timeout=WAIT)


def test_duplicates_are_dropped_before_handlers_and_inbox(
    serve: Callable[[Realtime], Forwarder], clients: list[Client]
) -> None:
    """One of the kept epoch at or below the kept offset reaches neither a handler nor recv(); a new epoch does."""
    rt = make_rt()
    client = connect(serve(rt).url(), TOKEN, timeout=WAIT)
    clients.append(client)
    seen: list[Any] = []
    client.subscribe("hist:dup", lambda msg: seen.append(msg.data))
    publish(rt, "hist:dup", range(1, 4))
    assert client.request("echo", "barrier") == "barrier"  # sent after the publications: read after them
    assert seen == [1, 2, 3]
    epoch = client.position("hist:dup")
    assert epoch is not None
    personal = client.position()
    assert personal is not None

    def channel(n: int, e: str = epoch.epoch) -> list[Any]:
        return ["pub", f"again {n}", {"channel": "hist:dup", "offset": str(n), "epoch": e}]

    def mine(n: int, e: str) -> list[Any]:
        return ["dm", f"dm {n}", {"offset": str(n), "epoch": e}]

    envelopes = [channel(2), channel(3), channel(4), channel(4), channel(1, "new-epoch")]
    envelopes += [mine(1, "p1"), mine(1, "p1"), mine(2, "p1")]
    assert client.request("replay", envelopes) == "sent"
    assert seen == [1, 2, 3, "again 4", "again 1"]
    assert [client.recv().data for _ in range(2)] == ["dm 1", "dm 2"]  # the inbox drops them too
    assert client.positions == {"hist:dup": Position(1, "new-epoch"), None: Position(2, "p1")}


def test_recovery_failure_fires_rt_recovery_failed_with_the_channel(
    serve: Callable[[Realtime], Forwarder], clients: list[Client]
) -> None:
    """50 publications while away in a history of 10: rt.recovery_failed names the channel, then live ones flow."""
    rt = make_rt()
    hop = serve(rt)
    client = connect(hop.url(), TOKEN, timeout=WAIT, reconnect=QUICK)
    clients.append(client)
    seen: list[Any] = []
    failed: list[Message] = []
    client.on("rt.recovery_failed", failed.append)
    client.subscribe("small:x", lambda msg: seen.append(msg.data))
    reader = reading(client)
    publish(rt, "small:x", range(1, 2))
    wait_until(lambda: seen == [1], "the first publication")
    cut_until_the_server_noticed(rt, hop)
    publish(rt, "small:x", range(2, 52))
    hop.restore()

    wait_until(lambda: failed, "rt.recovery_failed")
    epoch = client.position("small:x")
    assert epoch is not None
    assert failed[0].data == {"channel": "small:x", "offset": 51, "epoch": epoch.epoch}
    assert seen == [1]  # nothing half-recovered: the application reloads
    publish(rt, "small:x", range(52, 54))
    wait_until(lambda: seen == [1, 52, 53], lambda: f"the live publications, saw {seen}")
    assert len(failed) == 1
    client.close()
    reader.get(timeout=WAIT)


def test_without_a_handler_rt_recovery_failed_reaches_recv_across_the_reconnect(
    serve: Callable[[Realtime], Forwarder], clients: list[Client]
) -> None:
    """recv() waits across a reconnect; a personal stream lost meanwhile gives rt.recovery_failed, channel None."""
    rt = make_rt(small_personal=True)  # a personal history of 5
    hop = serve(rt)
    client = connect(hop.url(), TOKEN, timeout=WAIT, reconnect=QUICK)
    clients.append(client)
    rt.send_to_identity("acme", "ann", "dm", 1)
    assert client.recv().data == 1
    waiting = gevent.spawn(client.recv, timeout=WAIT)
    cut_until_the_server_noticed(rt, hop)
    for n in range(2, 22):
        rt.send_to_identity("acme", "ann", "dm", n)
    hop.restore()
    event = waiting.get(timeout=WAIT)
    assert event.route == "rt.recovery_failed"
    assert event.data == {"channel": None, "offset": 21, "epoch": client.positions[None].epoch}
    rt.send_to_identity("acme", "ann", "dm", 22)
    assert client.recv().data == 22


def test_positions_kept_by_a_program_resume_a_new_client(
    serve: Callable[[Realtime], Forwarder], clients: list[Client]
) -> None:
    """connect(positions=...) resumes each stream where an earlier client stood: what came since, then live."""
    rt = make_rt()
    url = serve(rt).url()
    first = connect(url, TOKEN, timeout=WAIT)
    first.subscribe("hist:doc")
    publish(rt, "hist:doc", range(1, 3))
    rt.send_to_identity("acme", "ann", "dm", "a")
    assert [first.recv().data for _ in range(3)] == [1, 2, "a"]
    saved = {stream: list(position) for stream, position in first.positions.items()}  # as JSON would keep them
    first.close()
    wait_until(lambda: not rt.sessions(), "the first client to be gone")
    publish(rt, "hist:doc", range(3, 5))
    rt.send_to_identity("acme", "ann", "dm", "b")

    again = connect(url, TOKEN, timeout=WAIT, positions=saved)
    clients.append(again)
    answers: list[Any] = []
    again.on("rt.subscribed", lambda msg: answers.append(msg.data))
    assert again.recv().data == "b"  # the personal stream, right after the connection opened
    reply = again.subscribe("hist:doc")
    assert reply["recovered"] is True and reply["missed"] == 2 and answers == [reply]
    assert [again.recv().data for _ in range(2)] == [3, 4]
    with pytest.raises(InvalidOption):
        connect(url, TOKEN, positions={"hist:doc": (-1, "x")})


def test_request_and_send_wait_for_the_reconnect(serve: Callable[[Realtime], Forwarder], clients: list[Client]) -> None:
    """A request made while the connection is down is sent once the client is back, and answered."""
    rt = make_rt()
    hop = serve(rt)
    client = connect(hop.url(), TOKEN, timeout=WAIT, reconnect=QUICK)
    clients.append(client)
    cut_until_the_server_noticed(rt, hop)
    pending = gevent.spawn(client.request, "echo", "after the cut")
    wait_until(lambda: hop.accepted >= 3, "attempts to reconnect while cut")
    assert not pending.ready()
    hop.restore()
    assert pending.get(timeout=WAIT) == "after the cut"
    client.send("echo", "sent")  # no reply: just no error
    assert client.request("echo", 2) == 2
    assert client.reconnects == 1 and not client.closed


def test_a_request_in_flight_when_the_connection_drops_raises_client_closed(
    serve: Callable[[Realtime], Forwarder], clients: list[Client]
) -> None:
    """Its reply went with the old connection: ClientClosed, and the next request works on the new one."""
    rt = make_rt()
    started, release = Event(), Event()

    @rt.route("hang")
    def hang(session: Session, msg: Message) -> Any:
        started.set()
        release.wait(WAIT)

    hop = serve(rt)
    client = connect(hop.url(), TOKEN, timeout=WAIT, reconnect=QUICK)
    clients.append(client)
    pending = gevent.spawn(client.request, "hang")
    assert started.wait(WAIT)
    hop.cut()
    with pytest.raises(ClientClosed):
        pending.get(timeout=WAIT)
    hop.restore()
    assert client.request("echo", "next") == "next"
    release.set()


def test_the_client_gives_up_after_the_attempts_its_policy_allows(
    serve: Callable[[Realtime], Forwarder], clients: list[Client]
) -> None:
    """Reconnect(attempts=3): three refused attempts in a row, then ClientClosed for good."""
    rt = make_rt()
    hop = serve(rt)
    client = connect(hop.url(), TOKEN, timeout=WAIT, reconnect=Reconnect(start=0.02, cap=0.05, attempts=3))
    clients.append(client)
    before = hop.accepted
    cut_until_the_server_noticed(rt, hop)
    with pytest.raises(ClientClosed) as gave_up:
        client.run(timeout=WAIT)
    assert "gave up after 3" in str(gave_up.value)
    assert hop.accepted - before == 3 and client.closed
    hop.restore()
    with pytest.raises(ClientClosed):
        client.request("echo", 1)


def test_no_reconnect_after_replaced_or_closed(serve: Callable[[Realtime], Forwarder], clients: list[Client]) -> None:
    """4001 (a newer login replaced the session) and the client's own close() end it for good."""
    rt = make_rt(session_policy="replace")
    hop = serve(rt)
    old = connect(hop.url(), TOKEN, timeout=WAIT, reconnect=QUICK)
    clients.append(old)
    reader = reading(old)
    new = connect(hop.url(), TOKEN, timeout=WAIT, reconnect=QUICK)
    clients.append(new)
    closed = reader.get(timeout=WAIT)
    assert isinstance(closed, ClientClosed) and closed.code == 4001
    assert old.closed and old.reconnects == 0
    assert new.request("echo", 1) == 1

    gone: list[DisconnectInfo] = []
    rt_two = make_rt()

    @rt_two.on_disconnect
    def record(session: Session, info: DisconnectInfo) -> None:
        gone.append(info)

    hop_two = serve(rt_two)
    client = connect(hop_two.url(), TOKEN, timeout=WAIT, reconnect=QUICK)
    reader = reading(client)
    client.close()
    assert isinstance(reader.get(timeout=WAIT), ClientClosed)
    wait_until(lambda: gone, "the server to see the close")
    assert gone[0].initiator == "client" and gone[0].code == 1000
    assert client.reconnects == 0 and hop_two.accepted == 1


def test_the_token_is_asked_for_at_every_connection_and_a_refusal_is_final(
    serve: Callable[[Realtime], Forwarder], clients: list[Client]
) -> None:
    """token= a function: a reconnect presents what it returns now; an HTTP 401 ends the reconnecting."""
    rt = make_rt()
    hop = serve(rt)
    current = [TOKEN]
    client = connect(hop.url(), lambda: current[0], timeout=WAIT, reconnect=QUICK)
    clients.append(client)
    cut_until_the_server_noticed(rt, hop)
    hop.restore()
    assert client.request("echo", 1) == 1  # the same token again
    cut_until_the_server_noticed(rt, hop)
    current[0] = "expired"
    hop.restore()
    with pytest.raises(ClientClosed) as refused:
        client.run(timeout=WAIT)
    assert "HTTP 401" in str(refused.value) and client.closed and client.reconnects == 1


def test_without_reconnect_a_cut_surfaces_as_client_closed(
    serve: Callable[[Realtime], Forwarder], clients: list[Client]
) -> None:
    """The default stays: no reconnect, the drop comes out of the call that reads."""
    rt = make_rt()
    hop = serve(rt)
    client = connect(hop.url(), TOKEN, timeout=WAIT)
    clients.append(client)
    hop.cut()
    hop.restore()
    with pytest.raises(ClientClosed):
        client.recv()
    assert client.closed and hop.accepted == 1


def test_a_subscription_refused_after_a_reconnect_is_an_event(
    serve: Callable[[Realtime], Forwarder], clients: list[Client]
) -> None:
    """rt.subscribe_failed names the channel the server no longer allows; the others are renewed."""
    rt = make_rt()
    allowed = {"hist:open", "hist:closing"}

    @rt.on_subscribe
    def only(session: Session, channel: str) -> None:
        if channel not in allowed:
            raise Unauthorized("not any more")

    hop = serve(rt)
    client = connect(hop.url(), TOKEN, timeout=WAIT, reconnect=QUICK)
    clients.append(client)
    client.subscribe("hist:open")
    client.subscribe("hist:closing")
    allowed.discard("hist:closing")
    cut_until_the_server_noticed(rt, hop)
    hop.restore()
    event = client.recv()
    assert event.route == "rt.subscribe_failed"
    assert event.data["channel"] == "hist:closing" and event.data["code"] == "unauthorized"
    rt.publish("hist:open", "pub", "still here")
    assert client.recv().data == "still here"


def test_a_channel_without_history_is_subscribed_again_without_an_event(
    serve: Callable[[Realtime], Forwarder], clients: list[Client]
) -> None:
    """A plain channel has nothing to recover: after the reconnect no rt.recovery_failed, live ones flow."""
    rt = make_rt()
    hop = serve(rt)
    client = connect(hop.url(), TOKEN, timeout=WAIT, reconnect=QUICK)
    clients.append(client)
    answers: list[Any] = []
    client.on("rt.subscribed", lambda msg: answers.append(msg.data))
    assert client.subscribe("plain")["epoch"] == ""
    cut_until_the_server_noticed(rt, hop)
    rt.publish("plain", "pub", "lost")
    hop.restore()
    pump(client, lambda: len(answers) == 2, "the renewed subscription")
    assert answers[1]["recovered"] is False
    rt.publish("plain", "pub", "live")
    assert client.recv().data == "live"  # the first message of the inbox: no event came before it


def test_policy_and_positions_are_checked() -> None:
    """Misuse raises InvalidOption: bounds of a Reconnect, positions that are not (offset, epoch)."""
    wrong: list[dict[str, Any]] = [{"attempts": 0}, {"start": 0}, {"start": 5, "cap": 1}, {"stable_after": -1}]
    for bad in wrong:
        with pytest.raises(InvalidOption):
            Reconnect(**bad)
    for positions in ({"c": (1,)}, {"c": ("x", "e")}, {"c": (1, 2)}, {3: (1, "e")}):
        with pytest.raises(InvalidOption):
            Positions(positions)  # type: ignore[arg-type]


def test_positions_follow_the_rules_of_spec_section_14() -> None:
    """Duplicates out, a new epoch in; an answer sets a position unless the epoch is the one kept; failures."""
    book = Positions({"c": (5, "e1")})

    def pub(offset: int, epoch: str, channel: str | None = "c") -> Message:
        meta = {"offset": str(offset), "epoch": epoch} | ({"channel": channel} if channel else {})
        return Message("pub", offset, metadata=meta)

    assert [book.admit(pub(n, "e1")) for n in (4, 5, 6, 6)] == [False, False, True, False]
    assert book.admit(pub(1, "e2")) and book.get("c") == (1, "e2")
    assert book.admit(Message("other", metadata={"channel": "c"}))  # not a publication of a stream
    assert book.admit(pub(1, "p", None)) and book.get(None) == (1, "p")

    assert book.answered("c", {"offset": 9, "epoch": "e2", "recovered": True}, asked=True) is None
    assert book.get("c") == (1, "e2")  # same epoch: the publications set the offset, not the answer
    assert book.answered("c", {"offset": 1, "epoch": "e2", "recovered": False}, asked=True) is None  # lost nothing
    assert book.admit(pub(2, "e2"))  # came before the answer below, which was read before it
    assert book.answered("c", {"offset": 1, "epoch": "e2", "recovered": False}, asked=True) is None
    assert book.get("c") == (2, "e2")  # never back
    assert book.answered("c", {"offset": 7, "epoch": "e2", "recovered": False}, asked=True) is not None  # trimmed
    assert book.get("c") == (7, "e2")
    failed = book.answered("c", {"offset": 7, "epoch": "e3", "recovered": False}, asked=True)
    assert failed is not None and failed.route == "rt.recovery_failed"
    assert failed.data == {"channel": "c", "offset": 7, "epoch": "e3"} and book.get("c") == (7, "e3")
    assert book.answered("d", {"offset": 0, "epoch": "", "recovered": False}, asked=False) is None
    assert book.get("d") == (0, "")  # "seen nothing": the next subscription asks from the start
    assert book.answered("d", {"offset": 0, "epoch": "", "recovered": False}, asked=True) is None  # no history
    failed = book.answered("d", {"offset": 4, "epoch": "e9", "recovered": False}, asked=True)
    assert failed is not None and failed.data["channel"] == "d"  # empty before, trimmed since
    assert book.answered("x", {"channel": "x"}, asked=True) is None and book.get("x") is None  # no history server


# ---------------------------------------------------------------------- rt.test_client


def test_test_client_subscribing_to_a_channel_the_server_put_it_in_reports_nothing_lost() -> None:
    """A server-side subscription's publications set the position; the client's own subscribe then recovers nothing."""
    rt = make_rt()

    @rt.on_connect
    def auto(session: Session) -> None:
        session.subscribe("hist:auto")

    client = rt.test_client(identity=ANN)
    publish(rt, "hist:auto", range(1, 3))
    assert [m.data for m in client.get_received() if m.route == "pub"] == [1, 2]
    again = client.subscribe("hist:auto").data  # already in it: nothing replayed, nothing lost
    assert (again["recovered"], again["missed"], again["offset"]) == (True, 0, 2)
    assert client.get_received() == []


def test_test_client_reconnect_recovers_channels_and_the_personal_stream() -> None:
    """drop(), publications and messages meanwhile, reconnect(): exactly the missed ones, in order, then live."""
    rt = make_rt()
    client = rt.test_client(identity=ANN)
    assert [m.route for m in client.get_received()] == ["rt.personal"]
    assert client.subscribe("hist:a").data["recovered"] is False
    publish(rt, "hist:a", range(1, 4))
    rt.send_to_identity("acme", "ann", "dm", "one")
    assert [m.data for m in client.get_received()] == [1, 2, 3, "one"]

    client.drop()
    assert not client.connected
    publish(rt, "hist:a", range(4, 9))
    rt.send_to_identity("acme", "ann", "dm", "two")
    answers = client.reconnect()
    assert client.connected and set(answers) == {"hist:a"}
    assert answers["hist:a"].data["recovered"] is True and answers["hist:a"].data["missed"] == 5
    assert client.request("echo", "x").data == "x"  # takes its answer, leaves the missed ones
    received = client.get_received()
    assert [(m.route, m.data) for m in received if m.route != "rt.personal"] == [("dm", "two")] + [
        ("pub", n) for n in range(4, 9)
    ]
    personal = [m.data for m in received if m.route == "rt.personal"]
    assert personal[0]["recovered"] is True and personal[0]["missed"] == 1
    publish(rt, "hist:a", range(9, 10))
    assert [m.data for m in client.get_received()] == [9]
    assert client.positions["hist:a"].offset == 9 and client.positions[None].offset == 2
    client.close()


def test_test_client_drop_is_a_dropped_connection_to_the_server() -> None:
    """on_disconnect sees the client's 1006, expected; the next session is the same identity's."""
    rt = make_rt()
    gone: list[DisconnectInfo] = []

    @rt.on_disconnect
    def record(session: Session, info: DisconnectInfo) -> None:
        gone.append(info)

    client = rt.test_client(identity=ANN)
    first = client.session
    client.reconnect()  # while connected: drops first
    assert (gone[0].initiator, gone[0].code, gone[0].expected) == ("client", 1006, True)
    assert client.session is not first and client.session.identity == ANN
    assert rt.sessions() == [client.session]
    client.close()
    assert len(gone) == 2 and gone[1].code == 1000
    with pytest.raises(SessionClosed):
        client.reconnect()


def test_test_client_keeps_what_it_was_sent_before_the_drop() -> None:
    """Messages not read yet when the session drops are received once, and not asked for again."""
    rt = make_rt()
    client = rt.test_client(identity=ANN)
    client.subscribe("hist:b")
    publish(rt, "hist:b", range(1, 4))
    answers = client.reconnect()
    assert answers["hist:b"].data["missed"] == 0  # it had 1..3 already
    assert [m.data for m in client.get_received() if m.route == "pub"] == [1, 2, 3]


def test_test_client_drops_duplicates() -> None:
    """A publication the test client has received already is not received again."""
    rt = make_rt()
    client = rt.test_client(identity=ANN)
    client.subscribe("hist:c")
    publish(rt, "hist:c", range(1, 3))
    client.get_received()
    epoch = client.position("hist:c")
    assert epoch is not None
    old = ["pub", "old", {"channel": "hist:c", "offset": "2", "epoch": epoch.epoch}]
    new = ["pub", "new", {"channel": "hist:c", "offset": "3", "epoch": epoch.epoch}]
    received = client.send("replay", [old, new, new], id="r")
    assert [m.data for m in received if m.route == "pub"] == ["new"]
    received = client.send("replay", [old, new], id="r2")
    assert [m.data for m in received if m.route == "pub"] == []
    assert client.position("hist:c") == (3, epoch.epoch)


def test_test_client_recovery_failed() -> None:
    """Too much missed for the channel's history: rt.recovery_failed follows the answer, nothing half-recovered."""
    rt = make_rt()
    client = rt.test_client(identity=ANN)
    client.subscribe("small:y")
    client.drop()
    publish(rt, "small:y", range(1, 31))
    answers = client.reconnect()
    assert answers["small:y"].data["recovered"] is False
    events = [m for m in client.get_received() if m.route != "rt.personal"]
    assert [m.route for m in events] == ["rt.recovery_failed"]
    assert events[0].data == {"channel": "small:y", "offset": 30, "epoch": client.positions["small:y"].epoch}


def test_test_client_subscribe_with_since_keeps_the_recovered_publications() -> None:
    """subscribe(since=...) returns the answer; the publications recovered before it wait in get_received."""
    rt = make_rt()
    publish(rt, "hist:d", range(1, 6))
    client = rt.test_client(identity=ANN)
    client.get_received()
    reply = client.subscribe("hist:d", since=(0, ""))
    assert reply.data["recovered"] is True and reply.data["missed"] == 5
    assert [m.data for m in client.get_received()] == [1, 2, 3, 4, 5]
