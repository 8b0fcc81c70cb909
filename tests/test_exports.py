"""The public names of ``rtgevent``: each one resolves, and importing the package stays cheap.

Like websockets' export guard: a name added to a module but not to the package, or to
``__all__`` but not to the lazy table, fails here rather than in a user's import.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import rtgevent

ROOT = Path(__file__).resolve().parent.parent

#: libraries only some deployments need: ``import rtgevent`` must import none of them
OPTIONAL = ("gevent", "greenlet", "kombu", "amqp", "redis")


def loaded_after(code: str) -> list[str]:
    """Run ``code`` in a clean interpreter; the optional libraries it left in ``sys.modules``."""
    probe = f"import sys\n{code}\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    return sorted(set(done.stdout.decode().split()) & set(OPTIONAL))


def test_all_is_the_lazy_table_and_the_version() -> None:
    """``__all__`` lists exactly the lazily imported names plus ``__version__``, each once."""
    assert len(rtgevent.__all__) == len(set(rtgevent.__all__))
    assert set(rtgevent.__all__) == set(rtgevent._LAZY) | {"__version__"}


@pytest.mark.parametrize("name", sorted(rtgevent._LAZY))
def test_every_name_resolves_to_its_module_object(name: str) -> None:
    """Each public name is the object of that name in its module, and public there too."""
    module = importlib.import_module(rtgevent._LAZY[name], "rtgevent")
    assert getattr(rtgevent, name) is getattr(module, name)
    assert name in module.__all__


def test_brokers_and_presence_stores_are_exported() -> None:
    """Every Broker and Presence implementation, and the URL factories, are public names."""
    for name in (
        "LocalBroker",
        "RedisBroker",
        "RedisClusterBroker",
        "KombuBroker",
        "MemoryPresence",
        "RedisPresence",
        "KombuEvents",
        "MemoryHistory",
        "RedisHistory",
        "broker_from_url",
        "presence_from_url",
        "history_from_url",
    ):
        assert name in rtgevent.__all__, name


def test_dir_lists_the_public_names() -> None:
    """``dir(rtgevent)`` is ``__all__``, sorted, whatever has been resolved so far."""
    assert dir(rtgevent) == sorted(rtgevent.__all__)


def test_unknown_name_raises_attribute_error() -> None:
    """A name that is not public raises AttributeError naming it (so ``hasattr`` works)."""
    with pytest.raises(AttributeError, match="no_such_name"):
        rtgevent.no_such_name  # noqa: B018
    assert not hasattr(rtgevent, "BrokerHandler")


def test_import_rtgevent_imports_no_optional_library() -> None:
    """``import rtgevent`` imports neither gevent, kombu nor redis: each is paid for on use."""
    assert loaded_after("import rtgevent") == []


def test_import_of_the_factories_imports_no_optional_library() -> None:
    """Reaching the URL factories imports no broker or presence library until a URL asks for one."""
    factories = "rtgevent.broker_from_url; rtgevent.presence_from_url; rtgevent.history_from_url"
    assert loaded_after(f"import rtgevent; {factories}") == []


def test_emitter_imports_no_gevent() -> None:
    """``rtgevent.Emitter`` is for processes without gevent: reaching it imports no gevent."""
    loaded = loaded_after("import rtgevent; rtgevent.Emitter")
    assert "gevent" not in loaded and "greenlet" not in loaded, loaded


def test_probe_sees_what_a_name_imports() -> None:
    """The probe itself: reaching a Redis room does show redis loaded (the checks above can fail)."""
    assert "redis" in loaded_after("import rtgevent; rtgevent.RedisPresence")
