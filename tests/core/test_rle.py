"""Tests of the competition RLE (uwm_d2.core.rle): hand-written rows, every malformed case, and
property tests against a naive reference encoder on every scan size of the data."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.rle import parse_rle, rle_decode, rle_encode

#: (H, W) of every scan size in the data; 310 x 360 is the non-square one (W = 360).
SCAN_SHAPES = [(266, 266), (310, 360), (276, 276), (234, 234)]


def naive_encode(mask: np.ndarray) -> str:
    """Reference: walk the pixels in row-major order, 1-based, one Python step at a time."""
    height, width = mask.shape
    tokens: list[int] = []
    run_start = None
    for row in range(height):
        for col in range(width):
            number = row * width + col + 1
            if mask[row, col] and run_start is None:
                run_start = number
            elif not mask[row, col] and run_start is not None:
                tokens += [run_start, number - run_start]
                run_start = None
    if run_start is not None:
        tokens += [run_start, height * width + 1 - run_start]
    return " ".join(str(token) for token in tokens)


# A 3 x 4 mask written out by hand. Row-major pixel numbers (1-based):
#   1  2  3  4        0 1 1 0
#   5  6  7  8        0 0 0 1
#   9 10 11 12        1 1 0 0
# Runs: pixels 2-3 (start 2, length 2) and pixels 8-10 (start 8, length 3).
HAND_MASK = np.array([[0, 1, 1, 0], [0, 0, 0, 1], [1, 1, 0, 0]], dtype=np.uint8)
HAND_RLE = "2 2 8 3"


def test_hand_written_mask_encodes_row_major() -> None:
    assert rle_encode(HAND_MASK) == HAND_RLE
    # Column-major flattening (a common public bug) gives another string for this mask.
    assert rle_encode(HAND_MASK.T.copy()) != HAND_RLE


def test_hand_written_string_decodes() -> None:
    decoded = rle_decode(HAND_RLE, (3, 4))
    assert decoded.dtype == np.uint8
    assert decoded.shape == (3, 4)
    np.testing.assert_array_equal(decoded, HAND_MASK)


def test_non_square_scan_runs_step_by_the_row_width() -> None:
    # 360 wide, 310 high: a 5-pixel wide vertical bar on rows 50..59, columns 100..104.
    mask = np.zeros((310, 360), dtype=bool)
    mask[50:60, 100:105] = True
    values = [int(token) for token in rle_encode(mask).split()]
    starts, lengths = values[0::2], values[1::2]
    assert starts[0] == 50 * 360 + 100 + 1
    assert np.all(np.diff(starts) == 360)
    assert lengths == [5] * 10
    np.testing.assert_array_equal(rle_decode(rle_encode(mask), (310, 360)), mask)


def test_full_empty_and_edge_pixels() -> None:
    assert rle_encode(np.zeros((4, 5), dtype=bool)) == ""
    assert rle_encode(np.ones((4, 5), dtype=np.uint8)) == "1 20"
    corners = np.zeros((4, 5), dtype=np.uint8)
    corners[0, 0] = corners[-1, -1] = 1
    assert rle_encode(corners) == "1 1 20 1"
    np.testing.assert_array_equal(rle_decode("1 1 20 1", (4, 5)), corners)


def test_any_nonzero_value_is_foreground() -> None:
    mask = np.array([[0, 255, 7], [0.5, 0, -1]])  # row-major: 0 1 1 1 0 1
    assert rle_encode(mask) == "2 3 6 1"


def test_encode_rejects_non_2d() -> None:
    with pytest.raises(ValueError, match="2D"):
        rle_encode(np.zeros((2, 3, 4)))


@pytest.mark.parametrize("empty", ["", "   ", None, math.nan, float("nan")])
def test_empty_values_decode_to_empty_mask(empty: object) -> None:
    decoded = rle_decode(empty, (3, 4))  # type: ignore[arg-type]
    assert decoded.shape == (3, 4)
    assert not decoded.any()


def test_adjacent_runs_are_accepted() -> None:
    # Touching (not overlapping) runs are valid input, though our encoder never writes them.
    np.testing.assert_array_equal(rle_decode("1 2 3 1", (1, 4)), [[1, 1, 1, 0]])


def test_whitespace_between_tokens_is_tolerated() -> None:
    np.testing.assert_array_equal(rle_decode(" 2  2\t8\n3 ", (3, 4)), HAND_MASK)


@settings(max_examples=300)
@given(st.text(alphabet="0123456789 \t\n\x0b", max_size=24))
def test_parse_agrees_with_plain_python_on_digit_strings(text: str) -> None:
    # The fast parser must read exactly what str.split() + int() would, or fail cleanly.
    numbers = [int(token) for token in text.split()]
    num_pixels = 10**12
    try:
        starts, lengths = parse_rle(text, num_pixels)
    except UWMInputError as error:
        assert repr(text) in str(error)
        pairs = list(zip(numbers[0::2], numbers[1::2], strict=False))
        in_range = all(s >= 1 and n >= 1 and s - 1 + n <= num_pixels for s, n in pairs)
        ordered = all(b[0] >= a[0] + a[1] for a, b in itertools.pairwise(pairs))
        assert len(numbers) % 2 or not in_range or not ordered
    else:
        assert (starts + 1).tolist() == numbers[0::2]
        assert lengths.tolist() == numbers[1::2]


def test_parse_rle_returns_zero_based_starts() -> None:
    starts, lengths = parse_rle("2 2 8 3", 12)
    assert starts.tolist() == [1, 7]
    assert lengths.tolist() == [2, 3]


@pytest.mark.parametrize(
    ("rle", "reason"),
    [
        ("1", "odd number of tokens"),
        ("1 2 3", "odd number of tokens"),
        ("1 a", "non-integer token"),
        ("1.0 2", "non-integer token"),
        ("1 2.5", "non-integer token"),
        ("1 +2", "non-integer token"),
        ("1 -2", "non-integer token"),
        ("-1 2", "non-integer token"),
        ("1 1_0", "non-integer token"),
        ("1 \u00b2", "non-integer token"),  # superscript two: str.isdigit() is True
        ("\u0661 1", "non-integer token"),  # Arabic-Indic one: int() would accept it
        ("1,2", "non-integer token"),
        ("0 1", "start below 1"),
        ("1 0", "non-positive run length"),
        ("1 2 5 0", "non-positive run length"),
        ("12 2", "runs past"),
        ("13 1", "runs past"),
        ("1 13", "runs past"),
        ("99999999999999999999 1", "runs past"),  # beyond int64: no overflow, no traceback
        ("1 99999999999999999999", "runs past"),
        ("5 1 1 1", "unsorted or overlapping"),
        ("1 3 2 1", "unsorted or overlapping"),
        ("1 3 3 1", "unsorted or overlapping"),
    ],
)
def test_malformed_rle_raises_naming_the_string(rle: str, reason: str) -> None:
    with pytest.raises(UWMInputError) as caught:
        rle_decode(rle, (3, 4))
    message = str(caught.value)
    assert repr(rle) in message
    assert reason in message
    assert "\n" not in message


def test_long_malformed_string_is_shown_shortened() -> None:
    rle = " ".join(["1 1"] * 50) + " x"
    with pytest.raises(UWMInputError) as caught:
        rle_decode(rle, (3, 4))
    assert rle[:40] in str(caught.value)
    assert len(str(caught.value)) < 150


def test_non_string_rle_raises() -> None:
    with pytest.raises(UWMInputError, match="must be a string"):
        rle_decode(12, (3, 4))  # type: ignore[arg-type]


def _random_mask(shape: tuple[int, int], seed: int, style: str, density: float) -> np.ndarray:
    """Noise, blocky blobs, or stripes touching the image borders, reproducibly from ``seed``."""
    rng = np.random.default_rng(seed)
    if style == "noise":
        return rng.random(shape) < density
    if style == "blobs":
        coarse = rng.random((shape[0] // 8 + 1, shape[1] // 8 + 1)) < density
        return np.kron(coarse, np.ones((8, 8), dtype=bool))[: shape[0], : shape[1]]
    mask = np.zeros(shape, dtype=bool)
    mask[:, rng.integers(0, shape[1]) :] = True  # runs that reach the last pixel of a row
    mask[rng.integers(0, shape[0]) :, :] ^= True
    return mask


@settings(max_examples=24, deadline=None)
@given(
    shape=st.sampled_from(SCAN_SHAPES),
    seed=st.integers(0, 2**32 - 1),
    style=st.sampled_from(["noise", "blobs", "edges"]),
    density=st.floats(0.0, 1.0),
)
def test_random_masks_match_reference_and_round_trip(
    shape: tuple[int, int], seed: int, style: str, density: float
) -> None:
    mask = _random_mask(shape, seed, style, density)
    encoded = rle_encode(mask)
    assert encoded == naive_encode(mask)
    decoded = rle_decode(encoded, shape)
    assert decoded.shape == shape
    np.testing.assert_array_equal(decoded, mask.astype(np.uint8))


@settings(max_examples=100, deadline=None)
@given(
    shape=st.sampled_from([*SCAN_SHAPES, (1, 1), (3, 4), (1, 17)]),
    gaps_and_lengths=st.lists(st.tuples(st.integers(1, 400), st.integers(1, 400)), max_size=30),
)
def test_canonical_strings_round_trip(
    shape: tuple[int, int], gaps_and_lengths: list[tuple[int, int]]
) -> None:
    # Build a valid canonical string (runs separated by at least one background pixel).
    tokens: list[int] = []
    position = 0  # 0-based pixel after the previous run
    for gap, length in gaps_and_lengths:
        start = position + (gap if tokens else gap - 1)
        length = min(length, shape[0] * shape[1] - start)
        if length < 1:
            break
        tokens += [start + 1, length]
        position = start + length
    text = " ".join(map(str, tokens))
    assert rle_encode(rle_decode(text, shape)) == text
