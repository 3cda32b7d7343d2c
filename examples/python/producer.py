#!/usr/bin/env python3
"""Publish orders to a weir topic over its HTTP API, with only the standard library.

The seed's producer, rewritten against weir: start a broker with
`weir serve` (or run a pipeline with `weir run PIPELINE --listen 127.0.0.1:7878`),
then

    python3 examples/python/producer.py --topic orders --count 1000

Each request publishes a batch as NDJSON and is answered once the batch is
durable, with the offsets it got; a failed request can be sent again (each
message carries an `id`, so the queue stores a repeat once).
"""

import argparse
import json
import os
import sys
import urllib.error
import urllib.request


def request(url, method="GET", body=None, content_type="application/json", token=None):
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = "Bearer " + token
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:7878", help="weir's HTTP API")
    p.add_argument("--topic", default="orders")
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--batch", type=int, default=100, help="messages per request")
    p.add_argument("--token", default=os.environ.get("WEIR_TOKEN"), help="bearer token (default $WEIR_TOKEN)")
    args = p.parse_args()

    status, body = request(f"{args.url}/v1/topics", "POST", json.dumps({"name": args.topic}).encode(), token=args.token)
    if status not in (201, 409):  # 409: it exists already
        sys.exit(f"creating topic {args.topic}: {status} {body['error']}")

    published = 0
    while published < args.count:
        n = min(args.batch, args.count - published)
        lines = []
        for i in range(published, published + n):
            order = {"order": i, "amount": i * 3 % 100}
            lines.append(json.dumps({"payload": json.dumps(order), "key": f"customer-{i % 10}", "id": f"order-{i}"}))
        body = ("\n".join(lines) + "\n").encode()
        status, answer = request(f"{args.url}/v1/topics/{args.topic}/messages", "POST", body, "application/x-ndjson", args.token)
        if status != 200:
            sys.exit(f"publishing: {status} {answer['error']}")
        published += answer["count"]
    print(f"published {published} messages to {args.topic}")


if __name__ == "__main__":
    main()
