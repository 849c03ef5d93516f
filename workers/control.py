"""The fleet's bookkeeping clock: requeue expired leases and plan new cells, on a thread of its own
in every worker that serves the control queue.

Why a thread, and not messages from `celery beat` on the control queue: a GPU worker runs one
task at a time (solo pool — a CUDA model cannot be forked) and a job lasts minutes. A control
message queued behind a job waits for it to end; if it carries an expiry (so stale ticks do not
pile up) it is discarded unseen, and the worker takes the next, equally stale one — a dead
worker's job stayed `running` until the whole queue drained, and new data was not planned while
work was queued. A priority queue does not help (the worker is *inside* a job), nor does running
the bookkeeping between batches (a plan of a million samples would stall the GPU). A thread runs
on its own clock whatever the worker's main thread is busy with, so `selectit worker --model NAME`
alone requeues a dead worker's job within lease + requeue interval and plans on schedule.

One worker of the fleet does each tick: before a tick, a worker takes a Redis key with
`SET NX PX` (it expires just before the next tick is due); the others skip that tick. If Redis
is unreachable the tick runs anyway — planning and requeueing are idempotent and serialised in
the database (advisory lock, `SKIP LOCKED`), so a duplicate costs time, never a duplicate cell.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("selectit.workers.control")

#: The tick key expires this share of an interval after it was taken: a worker whose tick is due
#: a little early still finds it free, so the fleet ticks about once per interval.
GATE_SHARE = 0.9
KEY_PREFIX = "selectit:tick:"


@dataclass
class Tick:
    """A piece of bookkeeping run every `interval` seconds by one worker of the fleet."""

    name: str
    interval: float
    run: Callable[[], Any]


class RedisGate:
    """`take(name, ttl)`: True for the first caller of the fleet per `ttl` seconds (Redis SET NX PX).

    `url` is the broker's; a broker that is not Redis (or is down) lets every caller through.
    """

    def __init__(self, url: str | None) -> None:
        self.url = url
        self._client: Any = None

    def take(self, name: str, ttl: float) -> bool:
        if not self.url or not self.url.startswith(("redis://", "rediss://", "unix://")):
            return True
        try:
            if self._client is None:
                import redis

                self._client = redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)
            return bool(self._client.set(KEY_PREFIX + name, "1", nx=True, px=max(1, int(ttl * 1000))))
        except Exception as exc:  # noqa: BLE001 - no broker: run the (idempotent) tick anyway
            log.warning("tick gate unavailable (%s): running %s here", exc, name)
            self._client = None
            return True


class ControlLoop:
    """Runs each `Tick` when due, on a daemon thread, until `stop()`."""

    def __init__(self, ticks: list[Tick], gate: RedisGate | None = None) -> None:
        self.ticks = ticks
        self.gate = gate or RedisGate(None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="selectit-control", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        due = {t.name: time.monotonic() for t in self.ticks}  # a (re)started worker ticks at once
        while not self._stop.is_set():
            for tick in self.ticks:
                now = time.monotonic()
                if now < due[tick.name]:
                    continue
                due[tick.name] = now + tick.interval
                if not self.gate.take(tick.name, tick.interval * GATE_SHARE):
                    continue  # another worker has this tick
                try:
                    tick.run()
                except Exception:  # noqa: BLE001 - the database or broker is away: try next tick
                    log.exception("control tick %s failed", tick.name)
            self._stop.wait(max(0.05, min(due.values()) - time.monotonic()))


def worker_step(make_loop: Callable[[Any], ControlLoop | None]) -> type:
    """A Celery worker bootstep that starts `make_loop(worker)` with the worker (None: no loop)."""
    from celery import bootsteps

    class ControlClock(bootsteps.StartStopStep):
        """Starts the control loop thread with the worker, stops it on shutdown."""

        def __init__(self, worker: Any, **kwargs: Any) -> None:
            self.loop: ControlLoop | None = None

        def start(self, worker: Any) -> None:
            self.loop = make_loop(worker)
            if self.loop is not None:
                self.loop.start()

        def stop(self, worker: Any) -> None:
            if self.loop is not None:
                self.loop.stop()

    return ControlClock
