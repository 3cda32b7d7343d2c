"""Counts messages per key in durable stage state and emits `key=count`.

The key is the message key, or the payload when there is none. State is
committed with the acknowledgements, so after any crash each key's counts
go 1, 2, 3 ... with none skipped and none counted twice (an output may be
repeated: outputs are at-least-once, state is exactly-once). Counters are
8-byte little-endian integers, as in the Rust and JavaScript examples, so
the three are interchangeable over the same state.

    [stage.config]
    retry_every = "7"   # optional: ask to retry a message on its first attempt
                        # whenever its count is a multiple of 7 (to exercise retries)
"""

import weir


class Count(weir.Stage):
    def init(self, config):
        self.retry_every = config.parse("retry_every", int)
        if self.retry_every is not None and self.retry_every <= 0:
            raise ValueError("config key `retry_every` must be > 0")

    def handle(self, msg):
        key = msg.key if msg.key is not None else msg.payload
        stored = weir.state.get(key)
        if stored is not None and len(stored) != 8:
            raise weir.Reject("corrupt counter")
        count = (int.from_bytes(stored, "little") if stored else 0) + 1
        # Written before deciding to retry: weir must discard it.
        weir.state.put(key, count.to_bytes(8, "little"))
        if msg.attempt == 1 and self.retry_every and count % self.retry_every == 0:
            raise weir.Retry(f"count {count} asks for a retry")
        return [key + f"={count}".encode()]


weir.export(Count)
