"""Hardening, the Python client over TLS: ``connect(wss_url, ssl=context)`` against a real TLS server.

The certificate is made for this test (self-signed, for 127.0.0.1 and localhost), the server
is gevent's pywsgi with it, and the client trusts exactly that certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gevent.pywsgi import WSGIServer

from rtgevent import Config, InvalidOption, Message, Realtime, Session
from rtgevent.client import connect
from tests.waiting import WAIT


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1 / localhost in ``directory``: with ``cryptography``, else ``openssl``."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither cryptography nor openssl is available to make a certificate")
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
        )
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rtgevent test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key


def echo_rt() -> Realtime:
    rt = Realtime(Config(heartbeat_interval=None))

    @rt.route("echo")
    def echo(session: Session, msg: Message) -> Any:
        return msg.data

    @rt.route("push")
    def push(session: Session, msg: Message) -> Any:
        session.send("pushed", msg.data)
        return None

    return rt


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A Realtime served over TLS by pywsgi on 127.0.0.1; yields its port and the certificate to trust."""
    cert, key = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    rt = echo_rt()
    server = WSGIServer(("127.0.0.1", 0), rt, ssl_context=context, log=None, error_log=None)
    server.start()
    try:
        yield server.server_port, cert
    finally:
        rt.shutdown(timeout=5)
        server.stop(timeout=5)


def trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def test_wss_with_a_context_that_trusts_the_certificate(tls_server: tuple[int, Path]) -> None:
    """connect(wss://..., ssl=context): the certificate and host name are verified, requests and pushes flow."""
    port, cert = tls_server
    with connect(f"wss://127.0.0.1:{port}/", timeout=WAIT, ssl=trusting(cert)) as client:
        assert client.request("echo", {"over": "tls", "n": [1, 2]}) == {"over": "tls", "n": [1, 2]}
        client.send("push", "news")
        pushed = client.recv()
        assert (pushed.route, pushed.data) == ("pushed", "news")
    assert client.closed


@pytest.mark.parametrize("scheme", ["https", "WSS"])
def test_https_and_upper_case_urls_are_tls_too(tls_server: tuple[int, Path], scheme: str) -> None:
    """``https://`` becomes ``wss://`` and takes the context the same way; schemes are case-insensitive."""
    port, cert = tls_server
    with connect(f"{scheme}://localhost:{port}/", timeout=WAIT, ssl=trusting(cert)) as client:
        assert client.request("echo", "hello") == "hello"


def test_wss_without_a_context_verifies_with_the_default_one(tls_server: tuple[int, Path]) -> None:
    """No ``ssl=``: the system's default context is used, and it does not trust a self-signed certificate."""
    port, _ = tls_server
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(f"wss://127.0.0.1:{port}/", timeout=WAIT)


def test_a_context_that_trusts_another_certificate_is_refused(tls_server: tuple[int, Path], tmp_path: Path) -> None:
    """The context given is the one used: trusting some other certificate fails the handshake."""
    port, _ = tls_server
    other = tmp_path / "other"
    other.mkdir()
    other_cert, _ = self_signed(other)
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(f"wss://127.0.0.1:{port}/", timeout=WAIT, ssl=trusting(other_cert))


def test_a_context_with_a_plain_ws_url_is_misuse(serve_realtime: Callable[[Any], Any]) -> None:
    """``ssl=`` with ``ws://`` raises InvalidOption (a ValueError) before any connection is made."""
    server = serve_realtime(echo_rt())
    with pytest.raises(InvalidOption, match="ssl"):
        connect(f"ws://127.0.0.1:{server.port}/", timeout=WAIT, ssl=ssl.create_default_context())
    with connect(f"ws://127.0.0.1:{server.port}/", timeout=WAIT) as client:  # without one, plain ws:// is fine
        assert client.request("echo", 1) == 1
