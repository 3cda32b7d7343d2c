import pytest
import weir
from weir.testing import Harness

from stage import Count


def test_counts_per_key():
    h = Harness(Count)
    out = h.handle_batch([weir.Message("a"), weir.Message("b"), weir.Message("a")])
    assert [r[0].payload for r in out] == [b"a=1", b"b=1", b"a=2"]
    assert h.state("a") == (2).to_bytes(8, "little")


def test_retry_every_fails_first_attempts_only():
    h = Harness(Count, {"retry_every": 2})
    h.handle(weir.Message("a"))
    with pytest.raises(weir.Retry):
        h.handle(weir.Message("a"))
    assert h.state("a") == (1).to_bytes(8, "little"), "a retried call's writes are undone"
    assert h.handle(weir.Message("a", attempt=2))[0].payload == b"a=2"
    with pytest.raises(ValueError, match="must be > 0"):
        Harness(Count, {"retry_every": 0})
