"""The one-line rule of every error message, and torch's out-of-memory error recognised by name."""

from __future__ import annotations

import pytest

from uwm_d2.core.errors import is_out_of_memory, one_line


def test_one_line_folds_white_space() -> None:
    assert one_line("  a\n\tb  c\r\n") == "a b c"
    assert one_line(ValueError("bad\nrow 3")) == "bad row 3"
    assert one_line("") == ""


@pytest.mark.parametrize(
    ("limit", "expected"), [(11, "abcde fghij"), (50, "abcde fghij"), (9, "abcde ...")]
)
def test_one_line_cuts_at_the_limit(limit: int, expected: str) -> None:
    assert one_line("abcde\nfghij", limit) == expected


class OutOfMemoryError(RuntimeError):
    """Named like ``torch.cuda.OutOfMemoryError``."""


def test_out_of_memory_is_recognised_by_name_or_message() -> None:
    assert is_out_of_memory(OutOfMemoryError("CUDA error"))
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
