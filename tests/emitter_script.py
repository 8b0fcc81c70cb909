"""A plain synchronous process (no gevent) sending through the Emitter from 8 threads.

Usage: python -m tests.emitter_script BROKER PRESENCE NAMESPACE THREADS PER_THREAD IDENTITY...
Thread t sends [t, i] for i in range(PER_THREAD) to identity IDENTITY[t % len(IDENTITY)].
An IDENTITY written ``#<channel>`` is a channel instead: thread t publishes ``"t<t>-<i>"`` to it.
"""

from __future__ import annotations

import sys
import threading

from rtgevent import Emitter


def main() -> int:
    broker, presence, namespace, threads, per_thread, *identities = sys.argv[1:]
    emitter = Emitter(broker, presence, namespace=namespace)
    errors: list[BaseException] = []

    def run(t: int) -> None:
        try:
            target = identities[t % len(identities)]
            for i in range(int(per_thread)):
                if target.startswith("#"):
                    emitter.publish(target[1:], "pub", f"t{t}-{i}")
                else:
                    emitter.send_to_identity("acme", target, "emit", [t, i])
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(t,)) for t in range(int(threads))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    emitter.close()
    assert "gevent" not in sys.modules, "the Emitter imported gevent"
    if errors:
        print(f"errors: {errors!r}", file=sys.stderr)
        return 1
    print("gevent-free: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
