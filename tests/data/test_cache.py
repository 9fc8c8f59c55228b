"""Scan caches: the same arrays and errors as read_scan, never stale, bounded, many processes."""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.io import read_scan, write_scan
from uwm_d2.data.cache import CACHE_SUFFIX, ScanCache, SliceLRU

HEIGHT, WIDTH = 31, 36  # non-square, like a 360x310 scan


def _case_day(folder: Path, count: int = 6, seed: int = 0) -> list[Path]:
    """``count`` random 16-bit scans (values far above 255) in one scans folder."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    paths = []
    for number in range(1, count + 1):
        path = folder / f"slice_{number:04d}_{WIDTH}_{HEIGHT}_1.50_1.50.png"
        write_scan(path, rng.integers(0, 60000, (HEIGHT, WIDTH), dtype=np.uint16))
        paths.append(path)
    return paths


def _rewrite(path: Path, image: np.ndarray, keep_inode: bool = False) -> None:
    """Change a scan the way an edit would: new content and a later modification time."""
    old = os.stat(path)
    if keep_inode:  # rewritten in place (same file, same inode)
        import cv2

        path.write_bytes(cv2.imencode(".png", image)[1].tobytes())
    else:
        write_scan(path, image)
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns + 1_000_000))


def _error(path: Path) -> str:
    with pytest.raises(UWMInputError) as caught:
        read_scan(path)
    return str(caught.value)


# -- SliceLRU ------------------------------------------------------------------------------------


def test_lru_returns_what_read_scan_reads_and_decodes_once(tmp_path: Path) -> None:
    paths = _case_day(tmp_path / "scans")
    calls: list[Path] = []

    def counting(path: Path) -> np.ndarray:
        calls.append(path)
        return read_scan(path)

    lru = SliceLRU(10 * 2**20, reader=counting)
    for _ in range(3):
        for path in paths:
            image = lru(path)
            np.testing.assert_array_equal(image, read_scan(path))
            assert image.dtype == np.uint16 and not image.flags.writeable
    assert calls == paths  # each PNG decoded once
    assert (lru.hits, lru.misses) == (12, 6)


@pytest.mark.parametrize("keep_inode", [False, True])
def test_lru_rereads_a_changed_png(tmp_path: Path, keep_inode: bool) -> None:
    path = _case_day(tmp_path / "scans", count=1)[0]
    lru = SliceLRU(2**20)
    before = lru(path).copy()
    changed = (before + 1).astype(np.uint16)  # same size on disk is likely: only the stamp tells
    _rewrite(path, changed, keep_inode)
    np.testing.assert_array_equal(lru(path), changed)
    assert lru.misses == 2


def test_lru_respects_its_bound(tmp_path: Path) -> None:
    paths = _case_day(tmp_path / "scans", count=8)
    per_slice = HEIGHT * WIDTH * 2
    lru = SliceLRU(3 * per_slice + 10)
    for path in paths:
        lru(path)
        assert lru.nbytes <= lru.max_bytes and len(lru) <= 3
    assert len(lru) == 3
    lru(paths[-1])  # the newest are kept
    assert lru.hits == 1
    tiny = SliceLRU(per_slice - 1)  # a slice larger than the bound is read, not kept
    np.testing.assert_array_equal(tiny(paths[0]), read_scan(paths[0]))
    assert len(tiny) == 0 and tiny.nbytes == 0


def test_lru_raises_read_scans_errors(tmp_path: Path) -> None:
    paths = _case_day(tmp_path / "scans", count=2)
    lru = SliceLRU(2**20)
    missing = paths[0].with_name("slice_0099_36_31_1.50_1.50.png")
    paths[1].write_bytes(paths[1].read_bytes()[:100])  # truncated
    for path in (missing, paths[1], tmp_path):
        with pytest.raises(UWMInputError) as caught:
            lru(path)
        assert str(caught.value) == _error(path) and "\n" not in str(caught.value)


def test_lru_pickles_empty(tmp_path: Path) -> None:
    paths = _case_day(tmp_path / "scans", count=2)
    lru = SliceLRU(2**20)
    lru(paths[0])
    copy = pickle.loads(pickle.dumps(lru))
    assert len(copy) == 0 and copy.max_bytes == lru.max_bytes
    np.testing.assert_array_equal(copy(paths[0]), read_scan(paths[0]))


# -- ScanCache -----------------------------------------------------------------------------------


def test_disk_cache_returns_what_read_scan_reads(tmp_path: Path) -> None:
    first = _case_day(tmp_path / "case1_day0" / "scans", seed=1)
    second = _case_day(tmp_path / "case1_day2" / "scans", count=3, seed=2)
    cache = ScanCache(tmp_path / "cache")
    for _ in range(2):
        for path in first + second:
            image = cache(path)
            np.testing.assert_array_equal(image, read_scan(path))
            assert image.dtype == np.uint16 and image.shape == (HEIGHT, WIDTH)
            assert not image.flags.writeable
    assert cache.builds == 2  # once per case-day
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 2 and all(name.endswith(CACHE_SUFFIX) for name in files)
    assert files[0].startswith("case1_day0_scans-")
    # A new reader (another process, say) uses the files without decoding anything.
    fresh = ScanCache(tmp_path / "cache", reader=lambda path: pytest.fail(f"decoded {path}"))
    for path in first + second:
        np.testing.assert_array_equal(fresh(path), read_scan(path))
    assert fresh.builds == 0


@pytest.mark.parametrize("keep_inode", [False, True])
def test_disk_cache_never_serves_a_changed_png(tmp_path: Path, keep_inode: bool) -> None:
    paths = _case_day(tmp_path / "scans")
    cache = ScanCache(tmp_path / "cache")
    old = cache(paths[2]).copy()
    changed = (65535 - old).astype(np.uint16)
    _rewrite(paths[2], changed, keep_inode)
    np.testing.assert_array_equal(cache(paths[2]), changed)
    np.testing.assert_array_equal(cache(paths[3]), read_scan(paths[3]))
    assert cache.builds == 2
    # Another reader that still has the old file open sees the change too.
    other = ScanCache(tmp_path / "cache")
    other(paths[0])
    _rewrite(paths[0], changed)
    np.testing.assert_array_equal(cache(paths[0]), changed)  # rebuilt by `cache` ...
    np.testing.assert_array_equal(other(paths[0]), changed)  # ... and picked up by `other`
    assert other.builds == 0


def test_disk_cache_raises_read_scans_errors_and_serves_the_rest(tmp_path: Path) -> None:
    paths = _case_day(tmp_path / "scans")
    good = paths[3].read_bytes()
    paths[1].write_bytes(good[:100] + bytes(200) + good[300:])  # bit rot: CRC error
    paths[4].write_bytes(good[: len(good) // 2])  # truncated
    missing = paths[0].with_name("slice_0099_36_31_1.50_1.50.png")
    cache = ScanCache(tmp_path / "cache")
    for path in (paths[1], paths[4], missing, paths[1]):
        with pytest.raises(UWMInputError) as caught:
            cache(path)
        assert str(caught.value) == _error(path) and "\n" not in str(caught.value)
    for path in (paths[0], paths[2], paths[3], paths[5]):
        np.testing.assert_array_equal(cache(path), read_scan(path))
    assert cache.builds == 1  # the bad files are recorded, not rebuilt for at every read
    fixed = np.full((HEIGHT, WIDTH), 12345, dtype=np.uint16)
    _rewrite(paths[1], fixed)
    np.testing.assert_array_equal(cache(paths[1]), fixed)


def test_disk_cache_rebuilds_a_damaged_cache_file(tmp_path: Path) -> None:
    paths = _case_day(tmp_path / "scans")
    ScanCache(tmp_path / "cache")(paths[0])
    (cache_file,) = (tmp_path / "cache").iterdir()
    cache_file.write_bytes(cache_file.read_bytes()[:-10])  # cut short
    cache = ScanCache(tmp_path / "cache")
    np.testing.assert_array_equal(cache(paths[5]), read_scan(paths[5]))
    assert cache.builds == 1
    cache_file.write_bytes(b"garbage")
    cache = ScanCache(tmp_path / "cache")
    np.testing.assert_array_equal(cache(paths[5]), read_scan(paths[5]))
    assert cache.builds == 1


def test_unwritable_cache_folder_falls_back_to_the_pngs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = _case_day(tmp_path / "scans", count=3)
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    cache = ScanCache(blocker)
    with caplog.at_level(logging.WARNING, logger="uwm_d2.data.cache"):
        for _ in range(2):
            for path in paths:
                np.testing.assert_array_equal(cache(path), read_scan(path))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot be written" in warnings[0].getMessage()


def test_disk_cache_pickles_without_its_maps(tmp_path: Path) -> None:
    paths = _case_day(tmp_path / "scans", count=2)
    cache = ScanCache(tmp_path / "cache")
    cache(paths[0])
    copy = pickle.loads(pickle.dumps(cache))
    assert repr(copy).endswith("open=0)")
    np.testing.assert_array_equal(copy(paths[1]), read_scan(paths[1]))
    assert copy.builds == 0


def _read_all(args: tuple[str, list[str]]) -> list[bytes]:
    cache_dir, paths = args
    cache = ScanCache(cache_dir)
    return [cache(path).tobytes() for path in paths for _ in range(2)]


def test_several_processes_share_one_cache(tmp_path: Path) -> None:
    """Processes building and reading the same case-days at once all get the right pixels."""
    folders = [tmp_path / f"case1_day{day}" / "scans" for day in range(3)]
    paths = [str(p) for day, f in enumerate(folders) for p in _case_day(f, seed=day)]
    jobs = [(str(tmp_path / "cache"), paths[i:] + paths[:i]) for i in range(0, 18, 3)]
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.map(_read_all, jobs)
    for (_, order), result in zip(jobs, results, strict=True):
        expected = [read_scan(path).tobytes() for path in order for _ in range(2)]
        assert result == expected
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(names) == 3 and not any(name.startswith(".") for name in names)  # no temp files
    check = ScanCache(tmp_path / "cache", reader=lambda path: pytest.fail(f"decoded {path}"))
    assert all(np.array_equal(check(path), read_scan(path)) for path in paths)
