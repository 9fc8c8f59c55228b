"""Registration of the COCO files in detectron2's catalogs: names, dataset dicts, metadata, pop."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("detectron2")

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from uwm_d2.config import build_cfg
from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.ids import CLASSES
from uwm_d2.data.coco import make_coco
from uwm_d2.data.register import (
    fold_numbers,
    load_uwm_json,
    register_from_cfg,
    register_uwm_datasets,
)

from ..conftest import INSTANT_CONFIG

FOLD_NAMES = ["uwm_train_fold0", "uwm_train_fold1", "uwm_val_fold0", "uwm_val_fold1"]


@pytest.fixture(scope="module")
def coco_dir(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("coco") / "coco"
    make_coco(phantom_root, out, num_folds=2, workers=1, progress=False)
    return out


def test_names_and_dataset_dicts(phantom_root: Path, coco_dir: Path) -> None:
    names = register_uwm_datasets(coco_dir, phantom_root, fold=1)
    assert names == [*FOLD_NAMES, "uwm_train", "uwm_val", "uwm_all"]
    everything = DatasetCatalog.get("uwm_all")
    coco = json.loads((coco_dir / "all.json").read_text())
    assert len(everything) == len(coco["images"])  # every slice, the empty ones too
    assert any(not r["annotations"] for r in everything)
    assert any(r["annotations"] for r in everything)
    for record in everything:
        assert Path(record["file_name"]).is_file()
        assert Path(record["file_name"]).is_relative_to(phantom_root)
        assert len(record["neighbor_files"]) == 3
        # Neighbours come from the record's own case-day folder.
        assert {Path(f).parent for f in record["neighbor_files"]} == {
            Path(record["file_name"]).parent
        }
        assert record["slice_id"].startswith(record["case_day"] + "_slice_")
        assert record["spacing"][0] == 3.0 and len(record["spacing"]) == 3
        for ann in record["annotations"]:
            assert ann["bbox_mode"] == BoxMode.XYWH_ABS
            assert 0 <= ann["category_id"] < len(CLASSES)
            assert ann["segmentation"]["size"] == [record["height"], record["width"]]
    non_square = [r for r in everything if (r["height"], r["width"]) == (310, 360)]
    assert non_square and all("_360_310_" in r["file_name"] for r in non_square)


def test_folds_split_by_case_and_alias_the_chosen_fold(phantom_root: Path, coco_dir: Path) -> None:
    register_uwm_datasets(coco_dir, phantom_root, fold=1)
    all_ids = {r["slice_id"] for r in DatasetCatalog.get("uwm_all")}
    for fold in (0, 1):
        train = DatasetCatalog.get(f"uwm_train_fold{fold}")
        val = DatasetCatalog.get(f"uwm_val_fold{fold}")
        assert {r["case"] for r in train}.isdisjoint({r["case"] for r in val})
        assert {r["slice_id"] for r in train} | {r["slice_id"] for r in val} == all_ids
    alias = [r["slice_id"] for r in DatasetCatalog.get("uwm_val")]
    assert alias == [r["slice_id"] for r in DatasetCatalog.get("uwm_val_fold1")]


def test_metadata(phantom_root: Path, coco_dir: Path) -> None:
    register_uwm_datasets(coco_dir, phantom_root)
    metadata = MetadataCatalog.get("uwm_val_fold0")
    assert metadata.thing_classes == list(CLASSES)
    assert metadata.evaluator_type == "uwm"
    assert metadata.json_file == str(coco_dir / "val_fold0.json")
    assert metadata.data_root == str(phantom_root)
    assert metadata.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2}
    assert not hasattr(metadata, "scan_geometry")  # dead metadata nobody read: gone


def test_reregistering_replaces_and_pop_works(phantom_root: Path, coco_dir: Path) -> None:
    register_uwm_datasets(coco_dir, phantom_root, slice_offsets=(-2, 0, 2))
    register_uwm_datasets(coco_dir, phantom_root, slice_offsets=(-1, 0, 1, 2, 3))
    assert len(DatasetCatalog.get("uwm_all")[0]["neighbor_files"]) == 5
    assert MetadataCatalog.get("uwm_all").slice_offsets == (-1, 0, 1, 2, 3)
    DatasetCatalog.remove("uwm_all")
    MetadataCatalog.remove("uwm_all")
    assert "uwm_all" not in DatasetCatalog.list()
    register_uwm_datasets(coco_dir, phantom_root)
    assert len(DatasetCatalog.get("uwm_all")[0]["neighbor_files"]) == 3


def test_builds_coco_files_when_missing(phantom_root: Path, tmp_path: Path) -> None:
    coco = tmp_path / "fresh"
    register_uwm_datasets(coco, phantom_root, num_folds=2)
    folds = [f"{split}_fold{k}.json" for split in ("train", "val") for k in (0, 1)]
    assert sorted(p.name for p in coco.iterdir()) == sorted(["all.json", "manifest.json", *folds])
    assert DatasetCatalog.get("uwm_val_fold1")


def test_exclude_bad_case_days(tiny_phantom_factory: Callable[..., Path], tmp_path: Path) -> None:
    root = tiny_phantom_factory(case_days={7: [0], 12: [1], 20: [2]}, max_slices=4)
    make_coco(root, tmp_path / "coco", num_folds=2, workers=1, progress=False)
    kept = load_uwm_json(tmp_path / "coco" / "all.json", root, exclude_bad=False)
    dropped = load_uwm_json(tmp_path / "coco" / "all.json", root, exclude_bad=True)
    assert "case7_day0" in {r["case_day"] for r in kept}
    assert "case7_day0" not in {r["case_day"] for r in dropped}
    assert len(dropped) == len(kept) - 4


def test_register_from_cfg_errors(phantom_root: Path, coco_dir: Path) -> None:
    base = ["UWM.COCO_DIR", str(coco_dir)]
    with pytest.raises(UWMInputError, match=r"UWM\.DATA_ROOT is not set"):
        register_from_cfg(build_cfg(INSTANT_CONFIG, base))
    with pytest.raises(UWMInputError, match="is not a folder"):
        register_from_cfg(
            build_cfg(INSTANT_CONFIG, [*base, "UWM.DATA_ROOT", str(coco_dir / "nope")])
        )
    good = [*base, "UWM.DATA_ROOT", str(phantom_root)]
    with pytest.raises(UWMInputError, match=r"UWM\.FOLD 4 has no train_fold4\.json"):
        register_from_cfg(build_cfg(INSTANT_CONFIG, [*good, "UWM.FOLD", "4"]))
    with pytest.raises(UWMInputError, match=r"DATASETS\.TEST names 'uwm_nope'"):
        register_from_cfg(build_cfg(INSTANT_CONFIG, [*good, "DATASETS.TEST", "('uwm_nope',)"]))
    assert "uwm_train" in register_from_cfg(build_cfg(INSTANT_CONFIG, good))


def test_missing_coco_file_is_one_line(phantom_root: Path, tmp_path: Path) -> None:
    with pytest.raises(UWMInputError, match="does not exist"):
        load_uwm_json(tmp_path / "nope.json", phantom_root)


def test_a_coco_folder_describes_one_build(phantom_root: Path, tmp_path: Path) -> None:
    """The stale-fold trap: 3 folds then 2 into one folder must not leave fold 2 to train on."""
    out = tmp_path / "new" / "coco"  # missing parents are created
    make_coco(phantom_root, out, num_folds=3, workers=1, progress=False)
    assert (out / "train_fold2.json").is_file()
    assert register_uwm_datasets(out, phantom_root, fold=2)
    make_coco(phantom_root, out, num_folds=2, workers=1, progress=False)
    assert not (out / "train_fold2.json").exists() and not (out / "val_fold2.json").exists()
    with pytest.raises(UWMInputError, match=r"UWM.FOLD 2 .*folds there: \[0, 1\]"):
        register_uwm_datasets(out, phantom_root, fold=2)
    # A file changed behind the manifest's back, or no manifest at all: refused, by name.
    (out / "val_fold1.json").write_text("{}")
    with pytest.raises(UWMInputError, match=r"val_fold1\.json' changed since the build"):
        register_uwm_datasets(out, phantom_root, fold=0)
    (out / "manifest.json").unlink()
    with pytest.raises(UWMInputError, match=r"no manifest\.json"):
        fold_numbers(out)
