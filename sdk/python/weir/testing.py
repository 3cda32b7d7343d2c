"""Test a stage natively with pytest, without building WebAssembly.

:class:`Harness` runs a stage the way weir does (``init`` with a config,
then batches) and records what it logged, the counters it added, and the
state and timers it wrote. State follows weir's rules: writes made in
``init`` are discarded, and so are a call's writes when it asks to retry
any message (weir then replays the batch one message at a time).

    from weir import Message
    from weir.testing import Harness
    from stage import Shout

    def test_shouts():
        h = Harness(Shout, {"suffix": "!"})
        assert h.handle(Message("hello"))[0].payload == b"HELLO!"
        assert h.counter("shouted") == 1
"""

from __future__ import annotations

import copy
from typing import Optional, Union

import weir
from weir import Config, Failure, Level, Message, Output, Retry, Stage, TimeDomain, Timer

__all__ = ["Harness"]


class _Recorder:
    """The host functions, natively: what a stage did, in memory."""

    def __init__(self):
        self.logs: list[tuple[Level, str]] = []
        self.counters: dict[str, int] = {}
        self.state: dict[bytes, bytes] = {}
        self.timers: set[tuple[int, int, bytes]] = set()  # (domain, at_ms, key)
        self.watermark: Optional[int] = None
        self.clock: Optional[int] = None

    def log(self, level, message):
        self.logs.append((level, message))

    def counter_add(self, name, delta):
        self.counters[name] = self.counters.get(name, 0) + delta

    def state_get(self, key):
        return self.state.get(key)

    def state_put(self, key, value):
        self.state[key] = value

    def state_delete(self, key):
        self.state.pop(key, None)

    def set_timer(self, domain, key, at_ms):
        self.timers.add((int(domain), at_ms, key))

    def delete_timer(self, domain, key, at_ms):
        self.timers.discard((int(domain), at_ms, key))

    def watermark_ms(self):
        return self.watermark

    def now_ms(self):
        return self.clock if self.clock is not None else weir._system_ms()


Result = Union[list[Output], Failure]


class Harness:
    """Runs a stage natively and records its calls to the host. Creating one
    clears what an earlier harness recorded."""

    def __init__(self, stage: type, config: Optional[dict] = None):
        if not (isinstance(stage, type) and issubclass(stage, Stage)):
            raise TypeError("Harness takes a subclass of weir.Stage")
        self._rec = weir._host = _Recorder()
        self.stage = stage()
        self.stage.init(Config((k, str(v)) for k, v in (config or {}).items()))
        self._rec.state.clear()  # writes in init are discarded
        self._rec.timers.clear()

    def handle(self, msg: Message) -> list[Output]:
        """Handle one message: its outputs, or its :class:`weir.Retry` or
        :class:`weir.Reject` raised."""
        result = self.handle_batch([msg])[0]
        if isinstance(result, Failure):
            raise result
        return result

    def handle_batch(self, batch: list[Message]) -> list[Result]:
        """Handle a batch as weir would: one result per message (its outputs
        or the failure), checking the stage returned one per message."""
        out = self._call(batch)
        if len(batch) == 1 or not any(isinstance(r, Retry) for r in out):
            return out
        return [r for m in batch for r in self._call([m])]

    def _call(self, batch):
        before = (dict(self._rec.state), set(self._rec.timers))
        out = [r if isinstance(r, Failure) else weir._outputs(r) for r in self.stage.handle_batch(list(batch))]
        assert len(out) == len(batch), "a stage must return exactly one result per input message"
        if any(isinstance(r, Retry) for r in out):
            self._rec.state, self._rec.timers = before
        return out

    def advance_watermark(self, ms: int) -> list[tuple[Timer, Result]]:
        """Move the watermark to ``ms`` (it never goes back) and fire every
        event-time timer it reaches, earliest first, as weir does after a
        batch; returns each fired timer with its result. ``2**64 - 1`` is
        the end of a finite source: every event-time timer fires."""
        w = self._rec.watermark
        self._rec.watermark = ms if w is None else max(w, ms)
        return self._fire(TimeDomain.EVENT_TIME, ms)

    def advance_clock(self, now_ms: int) -> list[tuple[Timer, Result]]:
        """Set the clock ``weir.timers.now_ms()`` reads (it never goes back;
        before the first call it is the system's) and fire every
        processing-time timer due, earliest first."""
        c = self._rec.clock
        self._rec.clock = now_ms if c is None else max(c, now_ms)
        return self._fire(TimeDomain.PROCESSING_TIME, now_ms)

    def _fire(self, domain, until):
        fired = []
        while True:
            due = sorted(t for t in self._rec.timers if t[0] == domain and t[1] <= until)
            if not due:
                return fired
            d, at_ms, key = due[0]
            self._rec.timers.discard(due[0])
            timer = Timer(TimeDomain(d), key, at_ms)
            before = (copy.copy(self._rec.state), set(self._rec.timers))
            result = weir._call(self.stage.on_timer, timer)
            fired.append((timer, result))
            if isinstance(result, Retry):  # undone, as weir does; it fires again later
                self._rec.state, self._rec.timers = before
                self._rec.timers.add(due[0])
                return fired

    def timers(self) -> list[Timer]:
        """The timers set and not yet fired, by domain, then time, then key."""
        return [Timer(TimeDomain(d), k, at) for d, at, k in sorted(self._rec.timers)]

    def logs(self) -> list[tuple[Level, str]]:
        """The lines logged so far."""
        return list(self._rec.logs)

    def counter(self, name: str) -> int:
        """The value of custom counter ``name``."""
        return self._rec.counters.get(name, 0)

    def state(self, key: Union[bytes, str]) -> Optional[bytes]:
        """The stored state for ``key``."""
        return self._rec.state.get(weir._bytes(key))
