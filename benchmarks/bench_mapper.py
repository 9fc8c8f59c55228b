"""Benchmark: images per second of ``UWMDatasetMapper`` (16-bit read, 2.5D stack, augmentation).

Goal: >= 150 images/s on 2 CPU cores, so a data loader with a few workers never starves a GPU.
Data: a phantom in the competition layout (every scan size of the data), registered like the real
data. Rows: the mapper in this process on one core (torch and OpenCV at 1 thread, as detectron2's
data-loader workers run), then through a ``torch.utils.data.DataLoader`` with N worker processes
(the way training uses it), for the training mapper (augmentation on) and the test mapper. Run::

    .venv/bin/python benchmarks/bench_mapper.py [--images 300] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

# Run as a plain script from anywhere: the package is used from the checkout, not installed.
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import cv2  # noqa: E402
import torch  # noqa: E402
from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.data.common import DatasetFromList, MapDataset  # noqa: E402

from uwm_d2.config import build_cfg  # noqa: E402
from uwm_d2.data.coco import make_coco  # noqa: E402
from uwm_d2.data.mapper import UWMDatasetMapper  # noqa: E402
from uwm_d2.data.register import register_uwm_datasets  # noqa: E402
from uwm_d2.phantom import make_phantom  # noqa: E402

CONFIG = REPO_ROOT / "configs" / "Base-UWM-MaskRCNN.yaml"


def _in_process(mapper: UWMDatasetMapper, records: list[dict], count: int) -> float:
    for record in records[:5]:  # warm-up
        mapper(record)
    start = time.perf_counter()
    for i in range(count):
        mapper(records[i % len(records)])
    return count / (time.perf_counter() - start)


def _loader(mapper: UWMDatasetMapper, records: list[dict], count: int, workers: int) -> float:
    dataset = MapDataset(DatasetFromList(records * (count // len(records) + 2), copy=False), mapper)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=1, num_workers=workers, collate_fn=lambda batch: batch, shuffle=True
    )
    iterator = iter(loader)
    for _ in range(workers * 2):  # warm-up: workers started and their first images done
        next(iterator)
    start = time.perf_counter()
    for _ in range(count):
        next(iterator)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300, help="images per measurement")
    parser.add_argument("--workers", type=int, default=2, help="data-loader worker processes")
    parser.add_argument("--size", type=int, default=384, help="INPUT.MIN_SIZE_TEST (and train)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    with tempfile.TemporaryDirectory() as tmp:
        data_root = Path(tmp) / "data"
        make_phantom(data_root, cases=4, test_cases=0, max_slices=40, seed=0, progress=False)
        make_coco(data_root, Path(tmp) / "coco", num_folds=2, progress=False)
        register_uwm_datasets(Path(tmp) / "coco", data_root, 2)
        records = DatasetCatalog.get("uwm_all")
        size = args.size
        jitter = f"({size - 64}, {size - 32}, {size}, {size + 32}, {size + 64})"
        cfg = build_cfg(
            CONFIG,
            [
                "MODEL.DEVICE", "cpu",
                "INPUT.MIN_SIZE_TRAIN", jitter,
                "INPUT.MIN_SIZE_TEST", str(size),
            ],
        )  # fmt: skip
        # Every augmentation on for every image: the worst case of the training mapper.
        cfg_all = build_cfg(
            CONFIG,
            [
                "MODEL.DEVICE", "cpu",
                "UWM.AUG.AFFINE_PROB", "1.0",
                "UWM.AUG.PHOTOMETRIC_PROB", "1.0",
                "INPUT.MIN_SIZE_TRAIN", f"({size},)",
            ],
        )  # fmt: skip
        mappers = {
            "train (config probabilities)": UWMDatasetMapper(cfg, is_train=True),
            "train (every augmentation)": UWMDatasetMapper(cfg_all, is_train=True),
            "test (resize only)": UWMDatasetMapper(cfg, is_train=False),
        }
        annotated = sum(bool(r["annotations"]) for r in records)
        print(
            f"phantom: {len(records)} slices ({annotated} annotated), 2.5D offsets "
            f"{tuple(cfg.UWM.SLICE_OFFSETS)}, input ~{size} px, {os.cpu_count()} CPUs"
        )
        print(
            f"| mapper | 1 process, 1 thread (img/s) | DataLoader, {args.workers} workers (img/s) |"
        )
        print("|---|---|---|")
        threads = torch.get_num_threads()
        for name, mapper in mappers.items():
            torch.set_num_threads(1)
            cv2.setNumThreads(1)
            single = _in_process(mapper, records, args.images)
            torch.set_num_threads(threads)
            cv2.setNumThreads(-1)
            loader = _loader(mapper, records, args.images, args.workers)
            print(f"| {name} | {single:.0f} | {loader:.0f} |")
        print("goal: >= 150 img/s with 2 workers on 2 cores")


if __name__ == "__main__":
    main()
