"""Tests of competition ids and scan file names (uwm_d2.core.ids)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.ids import (
    CLASSES,
    ScanName,
    SliceId,
    case_day_of,
    check_class,
    format_scan_name,
    format_slice_id,
    parse_case_day,
    parse_scan_name,
    parse_slice_id,
)


def test_parse_slice_id_known_value() -> None:
    parsed = parse_slice_id("case123_day20_slice_0065")
    assert parsed == SliceId(case=123, day=20, slice=65)
    assert parsed.case_day == "case123_day20"
    assert parsed.case_name == "case123"
    assert str(parsed) == "case123_day20_slice_0065"


@settings(max_examples=200)
@given(case=st.integers(0, 999_999), day=st.integers(0, 999_999), number=st.integers(0, 9999))
def test_slice_id_round_trip(case: int, day: int, number: int) -> None:
    text = format_slice_id(case, day, number)
    assert parse_slice_id(text) == SliceId(case, day, number)
    assert str(parse_slice_id(text)) == text


@settings(max_examples=200)
@given(st.text(alphabet="case_dylio0123456789\u0661 ", max_size=30))
def test_every_accepted_slice_id_formats_back_to_itself(text: str) -> None:
    try:
        parsed = parse_slice_id(text)
    except UWMInputError as error:
        assert repr(text) in str(error)
    else:
        assert str(parsed) == text


def test_slice_ids_sort_by_case_day_then_slice() -> None:
    ids = ["case2_day1_slice_0002", "case10_day0_slice_0001", "case2_day1_slice_0001"]
    ordered = [str(slice_id) for slice_id in sorted(map(parse_slice_id, ids))]
    assert ordered == ["case2_day1_slice_0001", "case2_day1_slice_0002", "case10_day0_slice_0001"]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "case1_day2_slice_001",  # three-digit slice
        "case1_day2_slice_00001",  # five-digit slice
        "case1_day2_slice_0001 ",  # trailing space
        " case1_day2_slice_0001",
        "Case1_day2_slice_0001",
        "case_day2_slice_0001",
        "case1_slice_0001",
        "case1-day2-slice-0001",
        "case1_day2_slice_0001.png",
        "case1_day2",
        "case012_day2_slice_0001",  # leading zero would not format back to itself
        "case1_day02_slice_0001",
        "case1234567_day2_slice_0001",
        "case\u0661_day2_slice_0001",  # Arabic-Indic digit one
        "case1_day2_slice_000\u0661",
        "case-1_day2_slice_0001",
    ],
)
def test_malformed_slice_id_raises_naming_it(text: str) -> None:
    with pytest.raises(UWMInputError) as caught:
        parse_slice_id(text)
    assert repr(text) in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("value", [None, 12, b"case1_day2_slice_0001"])
def test_non_string_slice_id_raises(value: object) -> None:
    with pytest.raises(UWMInputError, match="malformed slice id"):
        parse_slice_id(value)  # type: ignore[arg-type]


def test_parse_case_day() -> None:
    assert parse_case_day("case7_day0") == (7, 0)
    for bad in ("case7", "case7_day", "case07_day0", "case7_day0_slice_0001", "day0"):
        with pytest.raises(UWMInputError) as caught:
            parse_case_day(bad)
        assert repr(bad) in str(caught.value)


def test_case_day_of_a_slice_id() -> None:
    assert case_day_of("case12_day3_slice_0042") == "case12_day3"
    assert case_day_of(format_slice_id(0, 10, 1)) == "case0_day10"
    with pytest.raises(UWMInputError, match="case1_day2_slice_1"):
        case_day_of("case1_day2_slice_1")


def test_scan_name_width_comes_before_height() -> None:
    scan = parse_scan_name("slice_0087_360_310_1.50_1.50.png")
    assert scan == ScanName(slice=87, width=360, height=310, spacing_x=1.5, spacing_y=1.5)
    assert scan.width == 360
    assert scan.height == 310
    assert scan.shape == (310, 360)


def test_scan_name_spacing_and_round_trip() -> None:
    name = "slice_0001_276_276_1.63_1.63.png"
    scan = parse_scan_name(name)
    assert (scan.spacing_x, scan.spacing_y) == (1.63, 1.63)
    assert scan.file_name == name
    assert format_scan_name(1, 276, 276, 1.63, 1.63) == name
    assert parse_scan_name(format_scan_name(144, 234, 234, 1.5, 1.5)).shape == (234, 234)


@pytest.mark.parametrize(
    "name",
    [
        "slice_0087_360_310_1.50_1.50",  # no extension
        "slice_0087_360_310_1.50_1.50.PNG",
        "slice_0087_360_310_1.50.png",  # one spacing
        "slice_0087_360_310_1_1.png",  # spacings without a decimal point
        "slice_87_360_310_1.50_1.50.png",
        "slice_0087_0_310_1.50_1.50.png",  # zero width
        "slice_0087_360_310_0.00_1.50.png",  # zero spacing
        "slice_0087_360x310_1.50_1.50.png",
        "scans/slice_0087_360_310_1.50_1.50.png",  # a path, not a name
        "slice_0087_\u0663\u0666\u0660_310_1.50_1.50.png",  # non-ASCII digits
    ],
)
def test_malformed_scan_name_raises_naming_it(name: str) -> None:
    with pytest.raises(UWMInputError) as caught:
        parse_scan_name(name)
    assert repr(name) in str(caught.value)


def test_check_class() -> None:
    assert CLASSES == ("large_bowel", "small_bowel", "stomach")
    for name in CLASSES:
        assert check_class(name) == name
    with pytest.raises(UWMInputError, match="'Stomach'"):
        check_class("Stomach")
