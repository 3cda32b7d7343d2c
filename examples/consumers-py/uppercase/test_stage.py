import pytest
import weir
from weir.testing import Harness

from stage import Uppercase


def test_uppercases_text():
    h = Harness(Uppercase)
    assert h.handle(weir.Message("Hello World!"))[0].payload == b"HELLO WORLD!"


def test_rejects_binary():
    h = Harness(Uppercase)
    with pytest.raises(weir.Reject, match="not UTF-8"):
        h.handle(weir.Message(b"\xff\xfe"))
