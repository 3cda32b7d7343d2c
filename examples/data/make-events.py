"""Writes events.jsonl: the sample input of examples/pipelines/events.toml.

    python3 examples/data/make-events.py > examples/data/events.jsonl

Deterministic (a fixed seed): 2,000 JSON events, about one in ten at level
"debug" (dropped by the pipeline) and about one in a hundred broken (not
JSON, or without a level), which the pipeline dead-letters.
"""

import json
import random

rng = random.Random(16)
users = ["ada", "grace", "linus", "barbara", "ken", "margaret", "dennis", "frances"]
actions = ["login", "logout", "view", "click", "purchase", "search"]
for i in range(2000):
    r = rng.random()
    event = {
        "ts": 1_764_547_200_000 + i * 250,
        "level": "debug" if r < 0.10 else ("warn" if r < 0.20 else "info"),
        "user": rng.choice(users),
        "action": rng.choice(actions),
        "ms": rng.randint(1, 900),
    }
    b = rng.random()
    if b < 0.005:
        print(json.dumps(event, separators=(",", ":"))[:-7])  # cut short: not JSON
    elif b < 0.01:
        del event["level"]
        print(json.dumps(event, separators=(",", ":")))
    else:
        print(json.dumps(event, separators=(",", ":")))
