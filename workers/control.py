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

import datetime as dt
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


#: `record(name, started_at, seconds, error)`: stores one run of a tick (`selectit status` shows it).
Record = Callable[[str, dt.datetime, float, "str | None"], None]


class ControlLoop:
    """Runs each `Tick` when due, on a daemon thread, until `stop()`.

    A tick's next run is due `interval` seconds after its last one *started*, whether it worked or
    raised: a failing tick keeps its schedule. Its error is logged with the traceback once per
    distinct error (a database away for an hour is one traceback, not one a tick), and "recovered"
    when it works again. Every run the gate gave this worker is passed to `record`.
    """

    def __init__(self, ticks: list[Tick], gate: RedisGate | None = None, record: Record | None = None) -> None:
        self.ticks = ticks
        self.gate = gate or RedisGate(None)
        self.record = record
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error: dict[str, str] = {}  # tick name → its last logged error

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
                self.run_once(tick)
            self._stop.wait(max(0.05, min(due.values()) - time.monotonic()))

    def run_once(self, tick: Tick) -> None:
        """Run `tick` now, log its outcome and record it; never raises."""
        started, t0 = dt.datetime.now(dt.UTC).replace(tzinfo=None), time.monotonic()
        failure: Exception | None = None
        try:
            tick.run()
        except Exception as exc:  # noqa: BLE001 - the database or broker is away: try next tick
            failure = exc
        seconds = time.monotonic() - t0
        error = None if failure is None else f"{type(failure).__name__}: {failure}"
        self._log(tick.name, seconds, error, failure)
        if self.record is not None:
            try:
                self.record(tick.name, started, seconds, error)
            except Exception as exc:  # noqa: BLE001 - the tick's own outcome is logged already
                self._log(f"{tick.name} (recording)", seconds, f"{type(exc).__name__}: {exc}", exc)

    def _log(self, name: str, seconds: float, error: str | None, failure: Exception | None) -> None:
        if error is None:
            if self._last_error.pop(name, None) is not None:
                log.warning("control tick %s recovered (%.2f s)", name, seconds)
            else:
                log.info("control tick %s ran (%.2f s)", name, seconds)
        elif self._last_error.get(name) != error:
            self._last_error[name] = error
            log.error("control tick %s failed: %s (logged once until it changes or recovers)", name, error,
                      exc_info=failure)
        else:
            log.debug("control tick %s failed again: %s", name, error)


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
