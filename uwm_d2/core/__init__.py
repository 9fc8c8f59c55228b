"""The numpy-only core shared by training, evaluation and inference (no torch, no detectron2).

Every rule that more than one stage must apply identically lives here: competition ids and RLE,
validated 16-bit scan reading, intensity normalization, 2.5D stacking, the metric and the
instance-merge rule. Importing it is cheap and safe in any environment.
"""

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.ids import (
    CLASSES,
    SLICE_THICKNESS_MM,
    ScanName,
    SliceId,
    check_class,
    format_scan_name,
    format_slice_id,
    parse_case_day,
    parse_scan_name,
    parse_slice_id,
)
from uwm_d2.core.io import (
    DEFAULT_SLICE_OFFSETS,
    intensity_window,
    neighbor_indices,
    normalize_intensity,
    read_scan,
    stack_25d,
    write_scan,
)
from uwm_d2.core.merge import MergeRule, remove_single_slice_components
from uwm_d2.core.metrics import dice_3d, dice_coefficient, hausdorff_distance, hd95_mm
from uwm_d2.core.readings import score_volumes
from uwm_d2.core.rle import parse_rle, rle_decode, rle_encode

__all__ = [
    "CLASSES",
    "DEFAULT_SLICE_OFFSETS",
    "SLICE_THICKNESS_MM",
    "MergeRule",
    "ScanName",
    "SliceId",
    "UWMInputError",
    "check_class",
    "dice_3d",
    "dice_coefficient",
    "format_scan_name",
    "format_slice_id",
    "hausdorff_distance",
    "hd95_mm",
    "intensity_window",
    "neighbor_indices",
    "normalize_intensity",
    "parse_case_day",
    "parse_rle",
    "parse_scan_name",
    "parse_slice_id",
    "read_scan",
    "remove_single_slice_components",
    "rle_decode",
    "rle_encode",
    "score_volumes",
    "stack_25d",
    "write_scan",
]

# The data layout readers (pandas); appended after the list above, which other modules own.
from uwm_d2.core.layout_reader import index_scans, read_label_csv, read_prediction_csv

__all__ += ["index_scans", "read_label_csv", "read_prediction_csv"]
