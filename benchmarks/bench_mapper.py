"""Benchmark: images per second of ``UWMDatasetMapper`` (16-bit read, 2.5D stack, augmentation).

Goal: >= 150 images/s on 2 CPU cores through a DataLoader with 2 workers (the way training runs),
for the training mapper at ~384 px with 2.5D input and augmentation, so the loader never starves
a GPU. Data: a phantom in the competition layout (every scan size of the data, 15-30 instances
on annotated slices), registered like the real data.

Rows, each with its scan reader off and on (``--rounds`` interleaved rounds, median shown, so a
change of machine load hits both alike):

* training mapper, the config's augmentation probabilities / every augmentation on every image:
  PNG decoded at every read (``UWM.SCAN_CACHE False``) vs the pre-decoded, memory-mapped cache
  (``ScanCache``, built once before timing; its build is reported on its own line);
* test mapper (resize only), records in slice order as inference reads them: PNG decoded at every
  read vs the per-process ``SliceLRU`` (``UWM.SCAN_LRU_MB``).

Columns: the mapper in this process on one core (torch and OpenCV at 1 thread, as detectron2's
data-loader workers run); through a ``torch.utils.data.DataLoader`` with N worker processes;
the CPU time per image of the loader's processes together (main + workers, from ``getrusage``),
and the rate two otherwise idle cores would sustain at that cost (2000 / ms). The load average
is printed: on a shared machine, other processes slow the wall-clock columns, not the CPU one.
Run::

    .venv/bin/python benchmarks/bench_mapper.py [--images 300] [--workers 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

# Run as a plain script from anywhere: the package is used from the checkout, not installed.
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import cv2  # noqa: E402
import torch  # noqa: E402
from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.data.common import DatasetFromList, MapDataset  # noqa: E402

from uwm_d2.config import build_cfg  # noqa: E402
from uwm_d2.core.io import read_scan  # noqa: E402
from uwm_d2.data.cache import ScanCache, SliceLRU  # noqa: E402
from uwm_d2.data.coco import make_coco  # noqa: E402
from uwm_d2.data.mapper import UWMDatasetMapper  # noqa: E402
from uwm_d2.data.register import register_uwm_datasets  # noqa: E402
from uwm_d2.phantom import make_phantom  # noqa: E402

CONFIG = REPO_ROOT / "configs" / "Base-UWM-MaskRCNN.yaml"
GOAL = 150.0
_CHILDREN = resource.RUSAGE_CHILDREN


def _in_process(mapper: UWMDatasetMapper, records: list[dict], count: int) -> float:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        for record in records[:5]:  # warm-up
            mapper(record)
        start = time.perf_counter()
        for i in range(count):
            mapper(records[i % len(records)])
        return count / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(-1)


def _cpu_seconds() -> float:
    """CPU time of this process and of its children that have exited (the loader's workers)."""
    return sum(
        usage.ru_utime + usage.ru_stime
        for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(_CHILDREN))
    )


def _loader(
    mapper: UWMDatasetMapper, records: list[dict], count: int, workers: int, shuffle: bool
) -> tuple[float, float]:
    """Images/s through the DataLoader, and CPU ms per image of all its processes together."""
    dataset = MapDataset(DatasetFromList(records * (count // len(records) + 2), copy=False), mapper)
    cpu = _cpu_seconds()
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=1, num_workers=workers, collate_fn=lambda batch: batch, shuffle=shuffle
    )
    iterator = iter(loader)
    warm_up = workers * 2
    for _ in range(warm_up):  # workers started and their first images done
        next(iterator)
    start = time.perf_counter()
    for _ in range(count):
        next(iterator)
    rate = count / (time.perf_counter() - start)
    del iterator  # shut the workers down (and reap them) before the next measurement
    # Worker start-up and the images prefetched but not taken count too: a slight overestimate.
    cpu_ms = 1e3 * (_cpu_seconds() - cpu) / (count + warm_up)
    return rate, cpu_ms


def _build_cache(cache: ScanCache, records: list[dict]) -> str:
    """Build every case-day's cache file up front; what it cost, as one line."""
    folders = sorted({str(Path(record["file_name"]).parent) for record in records})
    start = time.perf_counter()
    files = [cache.build(folder) for folder in folders]
    seconds = time.perf_counter() - start
    size = sum(path.stat().st_size for path in files)
    return (
        f"scan cache: {len(folders)} case-days, {len(records)} slices decoded once in "
        f"{seconds:.1f} s ({1e3 * seconds / len(records):.2f} ms/slice), {size / 2**20:.1f} MB "
        f"on disk ({size / len(records) / 1024:.0f} KB/slice)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300, help="images per measurement")
    parser.add_argument("--workers", type=int, default=2, help="data-loader worker processes")
    parser.add_argument("--size", type=int, default=384, help="INPUT.MIN_SIZE_TEST (and train)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (median shown)")
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
        cache = ScanCache(Path(tmp) / "scan_cache")
        build_line = _build_cache(cache, records)
        lru_bytes = int(cfg.UWM.SCAN_LRU_MB * 2**20)

        def train(config, reader: Callable) -> UWMDatasetMapper:
            return UWMDatasetMapper(config, is_train=True, reader=reader)

        def test(reader: Callable) -> UWMDatasetMapper:
            return UWMDatasetMapper(cfg, is_train=False, reader=reader)

        # (row, shuffled like training?, {"off": mapper, "on": mapper})
        rows = [
            ("train (config probabilities)", True, train(cfg, read_scan), train(cfg, cache)),
            ("train (every augmentation)", True, train(cfg_all, read_scan), train(cfg_all, cache)),
            ("test (resize only, slice order)", False, test(read_scan), test(SliceLRU(lru_bytes))),
        ]
        annotated = [len(r["annotations"]) for r in records if r["annotations"]]
        print(
            f"phantom: {len(records)} slices ({len(annotated)} annotated, "
            f"{sum(annotated) / len(annotated):.1f} instances each), 2.5D offsets "
            f"{tuple(cfg.UWM.SLICE_OFFSETS)}, input ~{size} px, {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        print(build_line)
        results: dict[tuple[str, str, str], list[float]] = {}
        for _ in range(args.rounds):
            for name, shuffle, *mappers in rows:
                for label, mapper in zip(("off", "on"), mappers, strict=True):
                    single = _in_process(mapper, records, args.images)
                    loader, cpu_ms = _loader(mapper, records, args.images, args.workers, shuffle)
                    results.setdefault((name, label, "single"), []).append(single)
                    results.setdefault((name, label, "loader"), []).append(loader)
                    results.setdefault((name, label, "cpu"), []).append(cpu_ms)
        cache_kind = {"train": "decoded cache (ScanCache)", "test": "slice LRU (SliceLRU)"}
        print(
            f"| mapper | scan reader | 1 process, 1 thread (img/s) | DataLoader, {args.workers} "
            "workers (img/s) | CPU, all loader processes (ms/img) | 2 free cores at that CPU "
            "(img/s) |"
        )
        print("|---|---|---|---|---|---|")
        for name, *_ in rows:
            for label in ("off", "on"):
                reader = "PNG decode every read" if label == "off" else cache_kind[name[:5].strip()]
                single = statistics.median(results[(name, label, "single")])
                loader = statistics.median(results[(name, label, "loader")])
                cpu_ms = statistics.median(results[(name, label, "cpu")])
                print(
                    f"| {name} | {reader} | {single:.0f} | {loader:.0f} | {cpu_ms:.2f} | "
                    f"{2000 / cpu_ms:.0f} |"
                )
        key = ("train (config probabilities)", "on")
        achieved = statistics.median(results[(*key, "loader")])
        capacity = 2000 / statistics.median(results[(*key, "cpu")])
        print(
            f"goal: >= {GOAL:.0f} img/s with {args.workers} workers on 2 cores (training mapper, "
            f"decoded cache): measured {achieved:.1f} img/s "
            f"({'met' if achieved >= GOAL else 'NOT met'} on this machine as loaded now); its CPU "
            f"cost lets 2 free cores sustain {capacity:.0f} img/s "
            f"({'met' if capacity >= GOAL else 'NOT met'}); load average "
            f"{os.getloadavg()[0]:.1f} at the end ({args.rounds} rounds, medians)"
        )


if __name__ == "__main__":
    main()
