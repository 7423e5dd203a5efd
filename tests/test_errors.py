"""errors.first_line: the one line a foreign exception is reported with."""
import pytest

from flowsr_lp.cli import error_message
from flowsr_lp.errors import UsageError, first_line


@pytest.mark.parametrize("exc,expected", [
    (RuntimeError("shape mismatch\nat frame 3\n  more"), "shape mismatch"),
    (RuntimeError("\n\n  second line first  \nthird"), "second line first"),
    (RuntimeError(""), "RuntimeError"),  # an empty message used to raise IndexError
    (ValueError("   \n  "), "ValueError"),
])
def test_first_line(exc, expected):
    assert first_line(exc) == expected


def test_cli_message_keeps_our_errors_whole_and_cuts_foreign_ones():
    assert error_message(UsageError("bad --scale: must be > 1")) == "bad --scale: must be > 1"
    assert error_message(RuntimeError("")) == "RuntimeError"
    assert error_message(RuntimeError("a  b\nc")) == "a b"
