"""The queue workload of `weir bench queue` on Redis Streams: N messages of
100 bytes published in pipelines of BATCH XADDs from PRODUCERS connections
(threads), then read by one consumer of a consumer group with XREADGROUP
COUNT BATCH and acknowledged with one XACK per batch (at-least-once, as
weir's consumers acknowledge). Against a private redis-server started by
scripts/bench-peers with --appendonly yes and --appendfsync always or
everysec.

    python redis_streams.py PORT

Prints two lines: `publish N SECONDS` and `consume+ack N SECONDS`.
"""

import os
import sys
import threading
import time

import redis

N = int(os.environ.get("N", "300000"))
BATCH = int(os.environ.get("BATCH", "1000"))
PRODUCERS = int(os.environ.get("PRODUCERS", "2"))
PAYLOAD = b"x" * 100
STREAM = "weir-bench"


def produce(port, count):
    r = redis.Redis(port=port)
    sent = 0
    while sent < count:
        n = min(BATCH, count - sent)
        p = r.pipeline(transaction=False)
        for _ in range(n):
            p.xadd(STREAM, {"p": PAYLOAD})
        p.execute()
        sent += n


def main():
    port = int(sys.argv[1])
    r = redis.Redis(port=port)
    r.delete(STREAM)
    r.xgroup_create(STREAM, "g", id="0", mkstream=True)
    shares = [N // PRODUCERS + (1 if i < N % PRODUCERS else 0) for i in range(PRODUCERS)]
    threads = [threading.Thread(target=produce, args=(port, s)) for s in shares]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"publish {N} {time.perf_counter() - started}")

    got = 0
    started = time.perf_counter()
    while got < N:
        reply = r.xreadgroup("g", "c", {STREAM: ">"}, count=BATCH)
        if not reply:
            break
        ids = [i for i, _ in reply[0][1]]
        r.xack(STREAM, "g", *ids)
        got += len(ids)
    print(f"consume+ack {got} {time.perf_counter() - started}")
    r.delete(STREAM)


if __name__ == "__main__":
    main()
