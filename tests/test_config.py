"""Config validation: safe defaults, InvalidOption naming the field, Flask-style mappings."""

from __future__ import annotations

import pytest

from rtgevent import Backpressure, Config, InvalidOption
from rtgevent.config import Deflate


def test_defaults_are_the_documented_ones() -> None:
    """Config() carries SPEC section 3's defaults."""
    c = Config()
    assert (c.heartbeat_interval, c.pong_timeout, c.write_timeout) == (30, 10, 10)
    assert (c.read_limit, c.send_queue_size, c.backpressure) == (1 << 20, 256, Backpressure.CLOSE)
    assert (c.shutdown_timeout, c.auth_timeout, c.max_connections, c.presence_ttl) == (10, 5, 10000, 90)
    assert c.origin_patterns == [] and not c.insecure_origins and c.session_policy == "multi"
    assert not c.compression and not c.debug
    assert Config().node_id != Config().node_id


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("heartbeat_interval", 0),
        ("pong_timeout", -1),
        ("write_timeout", "10"),
        ("read_limit", 0),
        ("read_limit", True),
        ("send_queue_size", 1.5),
        ("backpressure", "sometimes"),
        ("max_connections", -5),
        ("presence_ttl", None),
        ("node_id", ""),
        ("origin_patterns", "example.com"),
        ("session_policy", "single"),
        ("debug", "yes"),
        ("auth_timeout", float("nan")),
    ],
)
def test_invalid_values_name_the_field(field: str, value: object) -> None:
    """A bad value raises InvalidOption whose message and .field name the field."""
    with pytest.raises(InvalidOption) as info:
        Config(**{field: value})
    assert info.value.field == field
    assert field in str(info.value) and str(info.value).startswith("rtgevent:")


def test_none_disables_timers_and_limits() -> None:
    """None is accepted where SPEC allows disabling."""
    c = Config(heartbeat_interval=None, pong_timeout=None, write_timeout=None, max_connections=None)
    assert c.heartbeat_interval is None and c.max_connections is None


def test_from_mapping_reads_prefixed_keys_and_refuses_typos() -> None:
    """from_mapping takes RTGEVENT_* keys, converts the policy, and refuses unknown ones."""
    c = Config.from_mapping({"RTGEVENT_READ_LIMIT": 2048, "RTGEVENT_BACKPRESSURE": "drop_oldest", "OTHER": 1})
    assert c.read_limit == 2048 and c.backpressure is Backpressure.DROP_OLDEST
    with pytest.raises(InvalidOption) as info:
        Config.from_mapping({"RTGEVENT_READ_LIMT": 1})
    assert info.value.field == "RTGEVENT_READ_LIMT"


def test_compression_true_means_the_websockets_server_settings() -> None:
    """compression=True is kept as `Deflate()`: 12-bit windows and memLevel 5, as websockets' servers."""
    on = Config(compression=True).compression
    assert on == Deflate() == Deflate(server_max_window_bits=12, client_max_window_bits=12, memory_level=5)
    assert Config(compression=False).compression is False


def test_compression_takes_a_deflate_or_a_mapping_of_its_fields() -> None:
    """A `Deflate` is kept; a mapping (a Flask config value) becomes one."""
    wide = Deflate(server_max_window_bits=15, client_max_window_bits=None, memory_level=8)
    assert Config(compression=wide).compression is wide
    c = Config.from_mapping({"RTGEVENT_COMPRESSION": {"server_max_window_bits": 10, "memory_level": 4}})
    assert c.compression == Deflate(server_max_window_bits=10, memory_level=4)


@pytest.mark.parametrize(
    "value",
    [
        "yes",
        1,
        {"server_max_window_bits": 8},
        {"server_max_window_bits": 16},
        {"server_max_window_bits": "12"},
        {"client_max_window_bits": 7},
        {"memory_level": 0},
        {"memory_level": 10},
        {"memory_level": True},
        {"server_no_context_takeover": 1},
        {"client_no_context_takeover": "no"},
        {"level": 9},
    ],
)
def test_bad_compression_settings_name_the_field(value: object) -> None:
    """A bad compression value or setting raises InvalidOption for ``compression``, naming what is wrong."""
    with pytest.raises(InvalidOption) as info:
        Config(compression=value)  # type: ignore[arg-type]
    assert info.value.field == "compression"
    if isinstance(value, dict):
        assert next(iter(value)) in str(info.value)
