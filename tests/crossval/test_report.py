"""The summary of a cross-validation is kept when nothing it was made from changed."""

from __future__ import annotations

from pathlib import Path

from uwm_d2.crossval.report import inputs_digest


def _folder(root: Path) -> tuple[Path, Path]:
    oof = root / "oof"
    (oof / "maps").mkdir(parents=True)
    (oof / "maps" / "case1_day1.npz").write_bytes(b"\x00\x01" * 100)
    (oof / "index.json").write_text("{}")
    labels = root / "train.csv"
    labels.write_text("id,class,segmentation\n")
    return oof, labels


def test_the_digest_changes_with_any_byte_name_or_setting(tmp_path: Path) -> None:
    oof, labels = _folder(tmp_path)
    settings = {"reading": "project", "checkpoints": {"0": "fold0/model_best.pth"}}
    before = inputs_digest(oof, labels, settings)
    assert inputs_digest(oof, labels, dict(settings)) == before  # a pure function of its inputs

    changed = []
    (oof / "maps" / "case1_day1.npz").write_bytes(b"\x00\x02" * 100)
    changed.append(inputs_digest(oof, labels, settings))
    (oof / "maps" / "case1_day1.npz").rename(oof / "maps" / "case1_day2.npz")
    changed.append(inputs_digest(oof, labels, settings))
    labels.write_text("id,class,segmentation\nx,stomach,\n")
    changed.append(inputs_digest(oof, labels, settings))
    changed.append(inputs_digest(oof, labels, {**settings, "reading": "competition"}))
    assert len({before, *changed}) == 5
