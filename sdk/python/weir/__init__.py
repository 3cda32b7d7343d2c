"""Write weir pipeline stages in Python.

A stage is a class derived from :class:`Stage`: weir creates one object per
stage instance, calls :meth:`Stage.init` with the stage's ``[stage.config]``
table, then :meth:`Stage.handle` with each message. ``weir.export(MyStage)``
at the bottom of ``stage.py`` names the class; ``weir build`` turns the
project into a ``weir:pipeline/stage`` WebAssembly component with
componentize-py.

    import weir

    class Shout(weir.Stage):
        def init(self, config):
            self.suffix = config.get("suffix", "")

        def handle(self, msg):
            weir.counter_add("shouted", 1)
            return [weir.Output.reply(msg, msg.text().upper() + self.suffix)]

    weir.export(Shout)

The same class runs natively under pytest with :mod:`weir.testing`, no
WebAssembly needed.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, TypeVar, Union

__all__ = [
    "Config",
    "Level",
    "Message",
    "Output",
    "Reject",
    "Retry",
    "Stage",
    "TimeDomain",
    "Timer",
    "counter_add",
    "export",
    "log",
    "state",
    "timers",
]

Bytes = Union[bytes, bytearray, str]


T = TypeVar("T")


def _bytes(value: Bytes) -> bytes:
    """Text is encoded as UTF-8; bytes pass through."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"expected bytes or str, got {type(value).__name__}")


class Failure(Exception):
    """Why a stage could not handle a message (raise a subclass)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Retry(Failure):
    """A transient failure: the message is delivered again later, after the
    stage's ``retry_backoff_ms``, until ``max_attempts``; then it is
    dead-lettered with this reason."""


class Reject(Failure):
    """A permanent failure (a poison message): dead-lettered at once with this
    reason, never retried."""


class Level(enum.IntEnum):
    """Severity of a log line (the WIT ``level`` enum, in its order)."""

    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4


class TimeDomain(enum.IntEnum):
    """The clock a timer follows (the WIT ``time-domain`` enum)."""

    EVENT_TIME = 0
    PROCESSING_TIME = 1


@dataclass(frozen=True)
class Timer:
    """A timer that fired: its domain, the key it was set for, its time."""

    domain: TimeDomain
    key: bytes
    at_ms: int


@dataclass
class Message:
    """One message delivered to a stage (see ``wit/weir.wit`` for each field).

    ``Message("hello")`` makes one for tests: topic ``test``, partition 0,
    offset 0, attempt 1.
    """

    payload: bytes
    key: Optional[bytes] = None
    headers: list = field(default_factory=list)
    topic: str = "test"
    partition: int = 0
    offset: int = 0
    timestamp_ms: int = 0
    event_time_ms: int = 0
    attempt: int = 1

    def __post_init__(self):
        self.payload = _bytes(self.payload)
        if self.key is not None:
            self.key = _bytes(self.key)
        self.headers = [(name, _bytes(value)) for name, value in self.headers]

    def text(self) -> str:
        """The payload as UTF-8 text; :class:`Reject` if it is not UTF-8 (such a
        message will never become valid)."""
        try:
            return self.payload.decode()
        except UnicodeDecodeError as e:
            raise Reject(f"payload is not UTF-8: {e}") from None

    def header(self, name: str) -> Optional[bytes]:
        """The value of the first header called ``name``."""
        return next((v for k, v in self.headers if k == name), None)


@dataclass
class Output:
    """One message a stage emits. ``topic=None`` sends it to the stage's
    default next hop; a topic name routes it there instead."""

    payload: bytes
    key: Optional[bytes] = None
    headers: list = field(default_factory=list)
    topic: Optional[str] = None

    def __post_init__(self):
        self.payload = _bytes(self.payload)
        if self.key is not None:
            self.key = _bytes(self.key)
        self.headers = [(name, _bytes(value)) for name, value in self.headers]

    @classmethod
    def reply(cls, msg: Message, payload: Bytes) -> "Output":
        """An output that keeps ``msg``'s key and headers with a new payload."""
        return cls(payload, key=msg.key, headers=list(msg.headers))

    @classmethod
    def forward(cls, msg: Message) -> "Output":
        """Pass ``msg`` on unchanged (payload, key, headers)."""
        return cls(msg.payload, key=msg.key, headers=list(msg.headers))


class Config:
    """A stage's ``[stage.config]`` table, flattened to string values."""

    def __init__(self, entries: Iterable[tuple[str, str]] = ()):
        self._entries = dict(entries)

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        """The value of ``key``, or ``default``."""
        return self._entries.get(key, default)

    def require(self, key: str) -> str:
        """The value of ``key``; a ``ValueError`` naming it if it is missing
        (raised from ``init``, it stops the pipeline at start)."""
        if key not in self._entries:
            raise ValueError(f"missing config key `{key}`")
        return self._entries[key]

    def parse(self, key: str, kind: Callable[[str], T]) -> Optional[T]:
        """``kind(value)`` for ``key`` (``None`` if missing); a ``ValueError``
        naming the key if it does not parse."""
        if key not in self._entries:
            return None
        try:
            return kind(self._entries[key])
        except (TypeError, ValueError) as e:
            raise ValueError(f"config key `{key}`: {e}") from None

    def items(self):
        """The (key, value) pairs."""
        return self._entries.items()

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __repr__(self) -> str:
        return f"Config({self._entries!r})"


Outputs = Optional[Iterable[Union[Output, bytes, str]]]


class Stage:
    """A pipeline stage. weir creates one object per stage instance (a stage
    may run several, its ``concurrency``), so keep what instances share in
    :mod:`weir.state`."""

    def init(self, config: Config) -> None:
        """Called once per instance before any message. An exception stops the
        pipeline at start and its message is shown to the user."""

    def handle(self, msg: Message) -> Outputs:
        """Handle one message: return its outputs (a list of :class:`Output`;
        ``bytes`` or ``str`` items become an ``Output`` with that payload and
        no key; ``None`` or ``[]`` drops the message), or raise :class:`Retry`
        or :class:`Reject`. Any other exception rejects the message with the
        exception as its reason."""
        raise NotImplementedError("a stage must define handle(self, msg)")

    def handle_batch(self, batch: list[Message]) -> list:
        """Handle a batch; must return one result per message, in order: its
        outputs, or a :class:`Failure` instance. The default calls
        :meth:`handle` for each message; override it to amortise work."""
        return [_call(self.handle, m) for m in batch]

    def on_timer(self, timer: Timer) -> Outputs:
        """A timer set with :func:`weir.timers.set` fired (weir deleted it; set
        it again to repeat). Its outputs go on like a message's, with the
        timer's time as their event time. Raise :class:`Retry` to have it
        fire again later, :class:`Reject` to dead-letter a record of it."""
        return None


def _outputs(result: Outputs) -> list[Output]:
    if result is None:
        return []
    if isinstance(result, (Output, bytes, bytearray, str)):
        result = [result]
    return [o if isinstance(o, Output) else Output(o) for o in result]


def _call(fn, arg) -> Union[list[Output], Failure]:
    """One message's (or timer's) result: its outputs, or the failure."""
    try:
        return _outputs(fn(arg))
    except Failure as f:
        return f
    except MemoryError:  # the instance's, not the message's fault: weir replaces the instance and retries
        raise
    except Exception as e:  # a bug in the stage: poison, not transient
        return Reject(f"{type(e).__name__}: {e}")


_exported: Optional[type] = None


def export(stage: type) -> type:
    """Name the component's stage class (once, in ``stage.py``). Returns it,
    so it can be used as a class decorator too."""
    global _exported
    if not (isinstance(stage, type) and issubclass(stage, Stage)):
        raise TypeError("weir.export takes a subclass of weir.Stage")
    _exported = stage
    return stage


# The host functions. Inside a component they are the `weir:pipeline/host`
# imports (weir._component installs them); natively, a weir.testing
# recorder.
_host = None


def _h():
    global _host
    if _host is None:
        from .testing import _Recorder

        _host = _Recorder()
    return _host


def log(level: Level, message: str) -> None:
    """Write a log line; weir tags it with the pipeline and stage names."""
    _h().log(Level(level), str(message))


def counter_add(name: str, delta: int = 1) -> None:
    """Add ``delta`` to the stage's custom counter ``name``, reported with its
    metrics."""
    _h().counter_add(name, int(delta))


class _State:
    """The stage's durable key-value state, shared by its instances. Writes
    are committed with the acknowledgement of the messages being handled:
    exactly once. Keys and values are bytes (``str`` is encoded as UTF-8)."""

    def get(self, key: Bytes) -> Optional[bytes]:
        """The value stored for ``key``, or ``None``."""
        return _h().state_get(_bytes(key))

    def put(self, key: Bytes, value: Bytes) -> None:
        """Store ``value`` for ``key``."""
        _h().state_put(_bytes(key), _bytes(value))

    def delete(self, key: Bytes) -> None:
        """Remove ``key``."""
        _h().state_delete(_bytes(key))


class _Timers:
    """Durable timers: weir calls :meth:`Stage.on_timer` when one fires.
    Committed like state, so after a crash none is lost and none fires
    twice into state."""

    def set(self, domain: TimeDomain, key: Bytes, at_ms: int) -> None:
        """Set a timer for ``key`` at ``at_ms`` (setting it again changes
        nothing). An event-time timer fires once the watermark reaches it, a
        processing-time one once the host's clock does."""
        _h().set_timer(TimeDomain(domain), _bytes(key), int(at_ms))

    def delete(self, domain: TimeDomain, key: Bytes, at_ms: int) -> None:
        """Delete the timer for ``key`` at ``at_ms``, if there is one."""
        _h().delete_timer(TimeDomain(domain), _bytes(key), int(at_ms))

    def watermark(self) -> Optional[int]:
        """The stage's event-time watermark (ms since the Unix epoch), ``None``
        before the first message; 2**64 - 1 once a finite source has ended."""
        return _h().watermark_ms()

    def now_ms(self) -> int:
        """Processing time now, ms since the Unix epoch (in a test harness,
        its clock)."""
        return _h().now_ms()


state = _State()
timers = _Timers()


def _system_ms() -> int:
    return time.time_ns() // 1_000_000
