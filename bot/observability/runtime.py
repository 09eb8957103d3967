"""What the CLI starts for a run: the metrics endpoint and the JSON log, from the config's
``metrics:`` and ``logging:`` sections, and the observer the engine calls.

``start(cfg)`` opens both (each only when configured); ``observer`` is None when neither
is. ``linger()`` keeps the endpoint up ``metrics.linger_s`` wall seconds after the run, so a
scraper can read the final values; SIGINT/SIGTERM end the wait early (the run is already
recorded, so the exit code stays the run's). ``close()`` stops both.
"""

from __future__ import annotations

import signal
import sys
import threading

from bot.errors import MmbotError
from bot.observability import Observer, Observers


class Observability:
    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.server = None
        self.jlog = None
        lc, mc = cfg.logging, cfg.metrics
        if lc.json_file:
            from bot.observability.jsonlog import JsonLog

            self.jlog = JsonLog(lc.json_file, lc.max_bytes, lc.backup_count)
        if mc.port is not None:
            from bot.observability.metrics import MetricsServer

            try:
                self.server = MetricsServer(mc.port, mc.host)
            except OSError as e:
                self.close()
                raise MmbotError(f"--metrics-port {mc.port} (metrics.port) on {mc.host}: cannot listen ({e.strerror or e})") from None
            print(f"mmbot: metrics on {self.server.url}", file=sys.stderr, flush=True)
        self._observers = 0
        self.observer: Observer | None = self.new_observer()

    def new_observer(self) -> Observer | None:
        """An observer for one more engine (one per market when a process runs several):
        its own metric labels and JSON-log run context; the event-loop lag probe (one per
        process) runs in the first only. None when neither metrics nor JSON logs are on."""
        mc = self.cfg.metrics
        observers: list[Observer] = []
        if self.jlog is not None:
            from bot.observability.jsonlog import JsonLogObserver

            observers.append(JsonLogObserver(self.jlog))
        if self.server is not None:
            from bot.observability.metrics import MetricsObserver

            observers.append(MetricsObserver(self.server.metrics, mc.update_interval_s,
                                             mc.loop_lag_interval_s if self._observers == 0 else None))
        self._observers += 1
        return Observers(*observers) if observers else None

    def linger(self) -> None:
        s = self.cfg.metrics.linger_s
        if self.server is None or s <= 0:
            return
        done = threading.Event()
        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old[sig] = signal.signal(sig, lambda *_: done.set())
            except ValueError:  # not the main thread: wait without handlers
                pass
        print(f"mmbot: run ended; metrics held on {self.server.url} for {s:g} s (SIGTERM or Ctrl-C ends it)",
              file=sys.stderr, flush=True)
        try:
            done.wait(s)
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.jlog is not None:
            self.jlog.close()
            self.jlog = None
