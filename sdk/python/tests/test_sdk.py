"""The Python SDK natively: what a stage returns becomes outputs or
failures the way weir reads them, and the harness keeps weir's rules for
state and timers."""

import pytest

import weir
from weir import Message, Output, Reject, Retry, TimeDomain
from weir.testing import Harness


class Echo(weir.Stage):
    def handle(self, msg):
        if msg.payload == b"none":
            return None
        if msg.payload == b"text":
            return "a string"
        if msg.payload == b"many":
            return [b"one", "two", Output("three", key="k", topic="side")]
        if msg.payload == b"bug":
            return {}["missing"]
        return Output.forward(msg)


def test_what_handle_returns_becomes_outputs():
    h = Harness(Echo)
    assert h.handle(Message("none")) == []
    assert h.handle(Message("text")) == [Output(b"a string")]
    assert h.handle(Message("many")) == [Output(b"one"), Output(b"two"), Output(b"three", key=b"k", topic="side")]
    fwd = h.handle(Message("x", key="k", headers=[("h", "v")]))
    assert fwd == [Output(b"x", key=b"k", headers=[("h", b"v")])]


def test_an_exception_in_handle_rejects_only_its_message():
    h = Harness(Echo)
    out = h.handle_batch([Message("x"), Message("bug"), Message("y")])
    assert out[0] == [Output(b"x")] and out[2] == [Output(b"y")]
    assert isinstance(out[1], Reject) and out[1].reason == "KeyError: 'missing'"


class Sum(weir.Stage):
    """Adds numbers per key; retries a message whose payload is `flaky` on
    its first attempt, after writing state."""

    def init(self, config):
        weir.state.put("written in init", "x")
        self.step = config.parse("step", int) or 1

    def handle(self, msg):
        total = int(weir.state.get(msg.key) or b"0") + self.step
        weir.state.put(msg.key, str(total))
        weir.counter_add("seen")
        if msg.payload == b"flaky" and msg.attempt == 1:
            raise Retry("try again")
        return [str(total)]


def test_state_written_in_init_or_by_a_retried_call_is_discarded():
    h = Harness(Sum, {"step": 2})
    assert h.state("written in init") is None
    out = h.handle_batch([Message("a", key="k"), Message("flaky", key="k"), Message("b", key="k")])
    # The batch asked for a retry: its writes were undone and it was
    # replayed one message at a time, as weir does.
    assert out[0] == [Output(b"2")] and isinstance(out[1], Retry) and out[2] == [Output(b"4")]
    assert h.state("k") == b"4"
    assert h.counter("seen") == 6
    with pytest.raises(ValueError, match="config key `step`"):
        Harness(Sum, {"step": "two"})


class Alarm(weir.Stage):
    def handle(self, msg):
        weir.timers.set(TimeDomain.EVENT_TIME, msg.key, msg.event_time_ms + 1000)
        weir.timers.set(TimeDomain.PROCESSING_TIME, msg.key, 5000)
        weir.log(weir.Level.INFO, f"armed {msg.key.decode()}")

    def on_timer(self, timer):
        if timer.key == b"flaky" and weir.state.get("tried") is None:
            weir.state.put("tried", "1")
            raise Retry("later")
        return [f"{timer.domain.name} {timer.key.decode()} {timer.at_ms} wm={weir.timers.watermark()}"]


def test_timers_fire_as_the_watermark_and_the_clock_pass_them():
    h = Harness(Alarm)
    h.handle(Message(b"", key=b"a", event_time_ms=100))
    h.handle(Message(b"", key=b"b", event_time_ms=2000))
    assert [(t.key, t.at_ms) for t in h.timers() if t.domain == TimeDomain.EVENT_TIME] == [(b"a", 1100), (b"b", 3000)]
    fired = h.advance_watermark(1500)
    assert [r for _, r in fired] == [[Output(b"EVENT_TIME a 1100 wm=1500")]]
    assert h.advance_watermark(1000) == [], "the watermark never goes back"
    assert [t.key for t, _ in h.advance_clock(5000)] == [b"a", b"b"]
    assert h.logs() == [(weir.Level.INFO, "armed a"), (weir.Level.INFO, "armed b")]


def test_a_timer_that_asks_to_retry_is_undone_and_kept():
    h = Harness(Alarm)
    h.handle(Message(b"", key=b"flaky", event_time_ms=0))
    (timer, result), = h.advance_watermark(2000)
    assert isinstance(result, Retry) and h.state("tried") is None, "its writes are undone"
    assert timer in h.timers(), "it fires again later"


def test_export_and_harness_take_only_stages():
    with pytest.raises(TypeError):
        weir.export(object)
    with pytest.raises(TypeError):
        Harness(Echo())
    assert weir.export(Echo) is Echo


def test_text_rejects_what_is_not_utf8():
    with pytest.raises(Reject, match="not UTF-8"):
        Message(b"\xff").text()
    assert Message("é").text() == "é"
    assert Message("x", headers=[("a", "1"), ("a", "2")]).header("a") == b"1"
