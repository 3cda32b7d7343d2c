"""The component side of the SDK: the ``weir:pipeline/consumer`` export
componentize-py calls, and the ``weir:pipeline/host`` imports behind
weir.log, weir.state and weir.timers. Imported only inside a component
(by ``weir_app``), where the ``wit_world`` bindings exist."""

from __future__ import annotations

import weir
from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import host, types

_LEVELS = [host.Level.TRACE, host.Level.DEBUG, host.Level.INFO, host.Level.WARN, host.Level.ERROR]
_DOMAINS = [types.TimeDomain.EVENT_TIME, types.TimeDomain.PROCESSING_TIME]


class _WitHost:
    """weir's host functions through the component's imports."""

    def log(self, level, message):
        host.log(_LEVELS[level], message)

    def counter_add(self, name, delta):
        host.counter_add(name, delta)

    def state_get(self, key):
        return host.state_get(key)

    def state_put(self, key, value):
        host.state_put(key, value)

    def state_delete(self, key):
        host.state_delete(key)

    def set_timer(self, domain, key, at_ms):
        host.set_timer(_DOMAINS[domain], key, at_ms)

    def delete_timer(self, domain, key, at_ms):
        host.delete_timer(_DOMAINS[domain], key, at_ms)

    def watermark_ms(self):
        return host.watermark_ms()

    def now_ms(self):
        return weir._system_ms()


weir._host = _WitHost()


def _result(r):
    if isinstance(r, weir.Retry):
        return Err(types.Failure_Retry(r.reason))
    if isinstance(r, weir.Failure):
        return Err(types.Failure_Reject(r.reason))
    return Ok([types.Output(o.topic, o.key, o.payload, o.headers) for o in weir._outputs(r)])


def _message(m: types.Message) -> weir.Message:
    msg = object.__new__(weir.Message)  # the fields are already bytes: skip the checks
    msg.__dict__.update(
        payload=m.payload,
        key=m.key,
        headers=m.headers,
        topic=m.topic,
        partition=m.partition,
        offset=m.offset,
        timestamp_ms=m.timestamp_ms,
        event_time_ms=m.event_time_ms,
        attempt=m.attempt,
    )
    return msg


class Consumer(exports.Consumer):
    """The export: one per component instance, holding the stage object."""

    stage = None

    def init(self, config):
        if weir._exported is None:
            raise Err("stage.py does not call weir.export(YourStage)")
        try:
            stage = weir._exported()
            stage.init(weir.Config(config))
        except Exception as e:
            raise Err(f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e))
        Consumer.stage = stage

    def handle_batch(self, batch):
        stage = Consumer.stage
        if stage is None:
            return [Err(types.Failure_Reject("stage used before init")) for _ in batch]
        try:
            results = stage.handle_batch([_message(m) for m in batch])
        except MemoryError:  # traps: weir replaces the instance and retries the batch
            raise
        except Exception as e:  # a handle_batch override that raised: every message fails alike
            r = e if isinstance(e, weir.Failure) else weir.Reject(f"{type(e).__name__}: {e}")
            return [_result(r)] * len(batch)
        return [_result(r) for r in results]

    def on_timers(self, timers):
        stage = Consumer.stage
        if stage is None:
            return [Err(types.Failure_Reject("stage used before init")) for _ in timers]
        return [
            _result(weir._call(stage.on_timer, weir.Timer(weir.TimeDomain(t.domain.value), t.key, t.at_ms)))
            for t in timers
        ]
