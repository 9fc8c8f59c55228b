"""Competition identifiers: slice ids (``case12_day3_slice_0042``), scan file names and classes.

Every parser here is strict: anything that is not exactly the competition's format raises
:class:`~uwm_d2.core.errors.UWMInputError` (a ``ValueError``) naming the offending string.
Paths on disk are only ever built from these validated values, never from raw CSV text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from uwm_d2.core.errors import UWMInputError

#: The three organs, in the order of COCO category ids (1, 2, 3) and model class indices (0, 1, 2).
CLASSES: tuple[str, str, str] = ("large_bowel", "small_bowel", "stomach")

#: Slice thickness in millimetres; the file names carry only the in-plane spacing.
SLICE_THICKNESS_MM = 3.0

# re.ASCII: a str pattern's \d otherwise matches any Unicode digit ("case\u0661" would parse as
# case 1). Case and day numbers have no leading zeros, so every accepted id formats back to itself.
_NUMBER = r"(0|[1-9]\d{0,5})"
_SLICE_ID_RE = re.compile(rf"case{_NUMBER}_day{_NUMBER}_slice_(\d{{4}})", re.ASCII)
_CASE_DAY_RE = re.compile(rf"case{_NUMBER}_day{_NUMBER}", re.ASCII)
_SCAN_NAME_RE = re.compile(
    r"slice_(\d{4})_(\d{1,5})_(\d{1,5})_(\d+\.\d+)_(\d+\.\d+)\.png", re.ASCII
)


@dataclass(frozen=True, order=True)
class SliceId:
    """One slice of one scan session: ``case<case>_day<day>_slice_<slice:04d>``."""

    case: int
    day: int
    slice: int

    @property
    def case_day(self) -> str:
        """The scan session this slice belongs to, e.g. ``case12_day3``."""
        return f"case{self.case}_day{self.day}"

    @property
    def case_name(self) -> str:
        """The patient folder name, e.g. ``case12``."""
        return f"case{self.case}"

    def __str__(self) -> str:
        return f"case{self.case}_day{self.day}_slice_{self.slice:04d}"


@dataclass(frozen=True)
class ScanName:
    """The facts encoded in a scan file name ``slice_ZZZZ_W_H_PX_PY.png`` (width first)."""

    slice: int
    width: int
    height: int
    spacing_x: float
    spacing_y: float

    @property
    def shape(self) -> tuple[int, int]:
        """Array shape ``(H, W)`` of the scan."""
        return (self.height, self.width)

    @property
    def file_name(self) -> str:
        return (
            f"slice_{self.slice:04d}_{self.width}_{self.height}_"
            f"{self.spacing_x:.2f}_{self.spacing_y:.2f}.png"
        )


def parse_slice_id(text: str) -> SliceId:
    """Parse ``case<N>_day<M>_slice_<ZZZZ>``; raise ``UWMInputError`` naming ``text`` otherwise."""
    match = _SLICE_ID_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise UWMInputError(f"malformed slice id {text!r} (expected case<N>_day<M>_slice_<ZZZZ>)")
    case, day, slice_number = (int(group) for group in match.groups())
    return SliceId(case, day, slice_number)


def case_day_of(slice_id: str) -> str:
    """The scan session of a slice id: ``case12_day3_slice_0042`` → ``case12_day3``.

    Raises:
        UWMInputError: ``slice_id`` is not a slice id (named).
    """
    return parse_slice_id(slice_id).case_day


def format_slice_id(case: int, day: int, slice_number: int) -> str:
    """Build the competition id of one slice."""
    return str(SliceId(case, day, slice_number))


def parse_case_day(text: str) -> tuple[int, int]:
    """Parse a scan-session name ``case<N>_day<M>`` into ``(case, day)``."""
    match = _CASE_DAY_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise UWMInputError(f"malformed case-day {text!r} (expected case<N>_day<M>)")
    return int(match.group(1)), int(match.group(2))


def parse_scan_name(name: str) -> ScanName:
    """Parse a scan file name ``slice_ZZZZ_W_H_PX_PY.png`` (W = width, H = height, mm spacing)."""
    match = _SCAN_NAME_RE.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise UWMInputError(
            f"malformed scan file name {name!r} (expected slice_ZZZZ_W_H_PX_PY.png)"
        )
    slice_number, width, height = (int(group) for group in match.groups()[:3])
    spacing_x, spacing_y = (float(group) for group in match.groups()[3:])
    if width <= 0 or height <= 0 or spacing_x <= 0 or spacing_y <= 0:
        raise UWMInputError(f"scan file name {name!r} has a zero size or spacing")
    return ScanName(slice_number, width, height, spacing_x, spacing_y)


def format_scan_name(
    slice_number: int, width: int, height: int, spacing_x: float, spacing_y: float
) -> str:
    """Build a scan file name; the inverse of :func:`parse_scan_name`."""
    return ScanName(slice_number, width, height, spacing_x, spacing_y).file_name


def class_order(name: str) -> tuple[int, str]:
    """Sort key of class names: :data:`CLASSES` order, any other name after them by name."""
    return (CLASSES.index(name) if name in CLASSES else len(CLASSES), name)


def check_class(name: str) -> str:
    """Return ``name`` if it is one of :data:`CLASSES`; raise ``UWMInputError`` otherwise."""
    if name not in CLASSES:
        raise UWMInputError(f"unknown class {name!r} (expected one of {', '.join(CLASSES)})")
    return name
