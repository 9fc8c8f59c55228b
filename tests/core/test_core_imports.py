"""The core's public names are re-exported by ``uwm_d2.core`` (that it imports no torch or
detectron2 is checked with every torch-free module in tests/test_module_map.py)."""

from __future__ import annotations


def test_public_api_is_reexported() -> None:
    import uwm_d2.core as core

    for name in core.__all__:
        assert hasattr(core, name), name
    for name in (
        "rle_encode",
        "rle_decode",
        "CLASSES",
        "parse_slice_id",
        "parse_scan_name",
        "SliceId",
        "ScanName",
        "UWMInputError",
        "read_scan",
        "normalize_intensity",
        "stack_25d",
        "neighbor_indices",
        "score_volumes",
        "MergeRule",
    ):
        assert name in core.__all__, name
