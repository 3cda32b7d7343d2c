"""examples/pipelines/window-bench.toml's work as a bytewax dataflow: N
events over KEYS keys (key k{i % KEYS}), each stamped with the time it was
made as its event time, counted per key per 1-second tumbling window
(EventClock without waiting for system time: the watermark is the latest
event time, as weir's with max_out_of_orderness_ms = 0), results written
to /dev/null. Each result's latency is the time it reached the sink minus
its window's end; windows still open when the input ends (closed by the
end of input, before their end) are left out of the latencies.

    python bytewax_windows.py

Prints one line: `bytewax-windows N SECONDS RESULTS COUNTED P99_MS`.
Run by scripts/bench-windows.
"""

import os
import time
from datetime import datetime, timedelta, timezone

import bytewax.operators as op
import bytewax.operators.windowing as win
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main

N = int(os.environ.get("N", "10000000"))
KEYS = int(os.environ.get("KEYS", "100000"))
BATCH = int(os.environ.get("BATCH", "64"))
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
LENGTH = timedelta(seconds=1)


class GenPart(StatefulSourcePartition):
    def __init__(self, resume):
        self.i = resume or 0

    def next_batch(self):
        if self.i >= N:
            raise StopIteration()
        end = min(N, self.i + BATCH)
        now = datetime.now(timezone.utc)
        out = [(f"k{i % KEYS}", now) for i in range(self.i, end)]
        self.i = end
        return out

    def snapshot(self):
        return self.i


class Gen(FixedPartitionedSource):
    def list_parts(self):
        return ["0"]

    def build_part(self, step_id, for_part, resume_state):
        return GenPart(resume_state)


RESULTS = []


class LatencyPart(StatelessSinkPartition):
    def write_batch(self, items):
        now = datetime.now(timezone.utc)
        for key, (window_id, count) in items:
            end = EPOCH + LENGTH * (window_id + 1)
            RESULTS.append(((now - end).total_seconds() * 1000, count))


class Latency(DynamicSink):
    def build(self, step_id, worker_index, worker_count):
        return LatencyPart()


def main():
    flow = Dataflow("windows")
    s = op.input("gen", flow, Gen())
    clock = win.EventClock(lambda e: e[1], wait_for_system_duration=timedelta(0))
    windower = win.TumblingWindower(length=LENGTH, align_to=EPOCH)
    counted = win.count_window("count", s, clock, windower, key=lambda e: e[0])
    op.output("out", counted.down, Latency())
    started = time.perf_counter()
    run_main(flow)
    secs = time.perf_counter() - started
    lat = sorted(ms for ms, _ in RESULTS if ms >= 0)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan")
    print(f"bytewax-windows {N} {secs:.3f} {len(RESULTS)} {sum(c for _, c in RESULTS)} {p99:.1f}")


if __name__ == "__main__":
    main()
