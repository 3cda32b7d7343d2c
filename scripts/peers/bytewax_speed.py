"""examples/pipelines/speed.toml's work as a bytewax dataflow: N messages of
100 bytes (the same bytes as weir's generator), drop those containing
b"debug", upper-case the rest, write them as lines to /dev/null.

    python bytewax_speed.py generate   # made in a source partition, BATCH at a time
    python bytewax_speed.py premade    # made before the clock starts (TestingSource)

Prints one line: `bytewax MODE N SECONDS`. Run by scripts/bench-peers.
"""

import os
import sys
import time

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSource, run_main

N = int(os.environ.get("N", "1000000"))
BATCH = int(os.environ.get("BATCH", "64"))
SIZE = 100
LETTERS = b"abcdefghijklmnopqrstuvwxyz" * 2


def record(i):
    """weir's Generator::record: the index, then letter (i + j) % 26 at byte j."""
    p = (b"%012d" % i)[:SIZE]
    while len(p) < SIZE:
        f = (i + len(p)) % 26
        p += LETTERS[f : f + min(26, SIZE - len(p))]
    return p


class GenPart(StatefulSourcePartition):
    def __init__(self, resume):
        self.i = resume or 0

    def next_batch(self):
        if self.i >= N:
            raise StopIteration()
        end = min(N, self.i + BATCH)
        out = [record(i) for i in range(self.i, end)]
        self.i = end
        return out

    def snapshot(self):
        return self.i


class Gen(FixedPartitionedSource):
    def list_parts(self):
        return ["0"]

    def build_part(self, step_id, for_part, resume_state):
        return GenPart(resume_state)


class NullPart(StatelessSinkPartition):
    def __init__(self):
        self.f = open("/dev/null", "wb")

    def write_batch(self, items):
        self.f.write(b"".join(x + b"\n" for x in items))


class Null(DynamicSink):
    def build(self, step_id, worker_index, worker_count):
        return NullPart()


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "generate"
    flow = Dataflow("speed")
    if mode == "premade":
        source = TestingSource([record(i) for i in range(N)], batch_size=BATCH)
    else:
        source = Gen()
    s = op.input("gen", flow, source)
    s = op.filter("drop-debug", s, lambda x: b"debug" not in x)
    s = op.map("shout", s, lambda x: x.upper())
    op.output("null", s, Null())
    started = time.perf_counter()
    run_main(flow)
    print(f"bytewax {mode} {N} {time.perf_counter() - started:.3f}")


if __name__ == "__main__":
    main()
