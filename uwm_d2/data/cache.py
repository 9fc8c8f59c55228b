"""Decoded scans, cached: each PNG decoded once, and never served once it has changed.

Two readers with :func:`~uwm_d2.core.io.read_scan`'s signature (a path in, the ``(H, W)``
``uint16`` scan out, the same one-line :class:`~uwm_d2.core.errors.UWMInputError` for a missing,
truncated or corrupt file, because errors are always raised by ``read_scan`` itself), to pass as
``UWMDatasetMapper(reader=...)``:

* :class:`SliceLRU`: a bounded in-memory LRU of decoded slices, per process. Inference and
  validation read a case-day in slice order, and a slice is a channel of the inputs of its
  neighbours too (offsets ``-2, 0, 2``): with a window of a few slices, every PNG is decoded
  once instead of three times. Memory: at most ``max_bytes`` per process (each data-loader worker
  has its own).
* :class:`ScanCache`: a pre-decoded copy of each case-day on disk, one file per scans folder, built
  on first use and memory-mapped. Training reads slices in random order, where an LRU that fits in
  memory rarely hits (38,496 slices, 5.4-8.6 GB decoded); the mapped files live in the OS page cache
  instead: shared by every worker and every training process, and dropped by the OS under memory
  pressure (clean file pages), so a process's own memory stays bounded.

Never stale: both stat every PNG they serve and compare size, modification time (ns) and inode
with what was recorded when it was decoded (taken *before* reading it, so a file that changes
while it is read is re-read next time); any difference decodes it again (a changed slice makes
:class:`ScanCache` rebuild that case-day's file). A rewrite that keeps size, inode and mtime to
the nanosecond would go unnoticed; file-system timestamps make that practically impossible for a
real edit, and ``write_scan``'s atomic replace changes the inode anyway.

Safe with many workers and processes: a cache file is written whole to a temp file and renamed
(:func:`uwm_d2.core.atomic.atomic_path`), so readers see the old file or the new one, never part
of one; two processes that build the same case-day at once just both do the work. A reader that
has the old file mapped keeps valid data (the data matches the stat recorded beside it). If the
cache folder cannot be written, the cache logs one warning and reads the PNGs directly.
No torch here.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import re
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from uwm_d2.core.atomic import atomic_path
from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.io import read_scan

logger = logging.getLogger(__name__)

Reader = Callable[[Path], np.ndarray]
#: What a file is checked against: ``(size, mtime_ns, inode)``.
Stamp = tuple[int, int, int]

#: First bytes of a :class:`ScanCache` file (format version 1).
CACHE_MAGIC = b"UWMSCAN1"
#: Data start at a multiple of this many bytes (page-friendly for the memory map).
_ALIGN = 64
#: File name suffix of the cache files.
CACHE_SUFFIX = ".uwmscan"


def file_stamp(path: str | os.PathLike) -> Stamp | None:
    """``(size, mtime_ns, inode)`` of a regular file, or ``None`` if it is not one (or missing)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return (info.st_size, info.st_mtime_ns, info.st_ino)


class SliceLRU:
    """A ``read_scan``-like reader that keeps the most recently read slices, up to ``max_bytes``.

    Returned arrays are read-only (they are the cached ones; an in-place change would corrupt
    the cache): copy before modifying. A slice larger than ``max_bytes`` is read and not kept.

    Args:
        max_bytes: bound of the decoded pixels kept (``0`` keeps nothing).
        reader: decodes one file on a miss.
    """

    def __init__(self, max_bytes: int, reader: Reader = read_scan) -> None:
        if max_bytes < 0:
            raise ValueError(f"SliceLRU needs max_bytes >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.reader = reader
        self._items: collections.OrderedDict[str, tuple[Stamp, np.ndarray]] = (
            collections.OrderedDict()
        )
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def __call__(self, path: str | os.PathLike) -> np.ndarray:
        path = Path(path)
        stamp = file_stamp(path)
        if stamp is None:
            return self.reader(path)  # raises read_scan's one-line error (missing, folder, ...)
        key = str(path)
        item = self._items.get(key)
        if item is not None:
            if item[0] == stamp:
                self._items.move_to_end(key)
                self.hits += 1
                return item[1]
            self._drop(key)
        self.misses += 1
        image = self.reader(path)
        if image.nbytes <= self.max_bytes:
            image.flags.writeable = False
            self._items[key] = (stamp, image)
            self.nbytes += image.nbytes
            while self.nbytes > self.max_bytes:
                self._drop(next(iter(self._items)))
        return image

    def _drop(self, key: str) -> None:
        _, image = self._items.pop(key)
        self.nbytes -= image.nbytes

    def clear(self) -> None:
        """Forget every slice."""
        self._items.clear()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __getstate__(self) -> dict[str, Any]:
        # A worker started by pickling (spawn) begins empty rather than copying the parent's.
        state = self.__dict__.copy()
        state["_items"] = collections.OrderedDict()
        state["nbytes"] = state["hits"] = state["misses"] = 0  # per-process counts
        return state

    def __repr__(self) -> str:
        return f"SliceLRU(max_bytes={self.max_bytes}, held={len(self)} slices, {self.nbytes} B)"


@dataclass
class _CaseDayFile:
    """One opened cache file: its index and its memory-mapped pixels."""

    path: Path
    file: Stamp
    slices: dict[str, list[int]]  # name -> [size, mtime_ns, inode, height, width, offset]
    failed: dict[str, list[int]]  # name -> [size, mtime_ns, inode] of PNGs read_scan rejected
    pixels: np.ndarray | None = field(default=None, repr=False)

    def get(self, name: str, stamp: Stamp) -> np.ndarray | None:
        entry = self.slices.get(name)
        if entry is None or tuple(entry[:3]) != stamp or self.pixels is None:
            return None
        height, width, offset = entry[3:]
        return self.pixels[offset : offset + height * width].reshape(height, width)

    def rejected(self, name: str, stamp: Stamp) -> bool:
        entry = self.failed.get(name)
        return entry is not None and tuple(entry) == stamp


class ScanCache:
    """A ``read_scan``-like reader backed by pre-decoded, memory-mapped case-day files.

    Each scans folder (one case-day) gets one file in ``cache_dir``, named after the case-day and
    a hash of the folder's absolute path: a small header (magic, length, JSON index of every PNG
    with its stamp, shape and offset) and then every slice as little-endian ``uint16``. It is
    built the first time a slice of the folder is read, and rebuilt when a PNG it served has
    changed. Arrays returned are read-only views of the map.

    Disk: the decoded pixels, ``sum(H * W * 2)`` bytes over the case-days read, plus a few KB of
    index per case-day. Memory per process: at most ``max_open`` mapped files (address space,
    not resident memory: the pages belong to the OS page cache).

    Args:
        cache_dir: where the files go (created when needed).
        reader: decodes the PNGs (and raises their errors).
        max_open: case-day files kept open (mapped) per process.
    """

    def __init__(
        self, cache_dir: str | os.PathLike, reader: Reader = read_scan, max_open: int = 64
    ):
        if max_open < 1:
            raise ValueError(f"ScanCache needs max_open >= 1, got {max_open}")
        self.cache_dir = Path(cache_dir)
        self.reader = reader
        self.max_open = int(max_open)
        self._open: collections.OrderedDict[str, _CaseDayFile] = collections.OrderedDict()
        self._writable = True
        # (folder, name, stamp) that a fresh build still did not cover (a PNG that changed while
        # it was decoded, say): read directly rather than rebuild on every read. Bounded.
        self._direct: set[tuple[str, str, Stamp]] = set()
        self.builds = 0

    # -- reading ---------------------------------------------------------------------------------

    def __call__(self, path: str | os.PathLike) -> np.ndarray:
        path = Path(path)
        stamp = file_stamp(path)
        if stamp is None or not path.name.endswith(".png"):
            return self.reader(path)  # raises read_scan's one-line error (or reads a non-.png)
        folder, name = path.parent, path.name
        key = os.path.abspath(folder)
        case_day = self._open.get(key)
        if case_day is not None:
            self._open.move_to_end(key)
            image = case_day.get(name, stamp)
            if image is not None:
                return image
        # Not open, or stale here: another process may have rebuilt the file since.
        case_day = self._load(key)
        if case_day is not None:
            image = case_day.get(name, stamp)
            if image is not None:
                return image
            if case_day.rejected(name, stamp):
                return self.reader(path)  # a bad PNG: read_scan raises its own error
        if self._writable and (key, name, stamp) not in self._direct:
            case_day = self._rebuild(folder)
            if case_day is not None:
                image = case_day.get(name, stamp)
                if image is not None:
                    return image
            if len(self._direct) >= 4096:
                self._direct.clear()
            self._direct.add((key, name, stamp))
        # Changed while the case-day was built, rejected by read_scan, or no writable cache:
        # the direct read is always right.
        return self.reader(path)

    def file_for(self, folder: str | os.PathLike) -> Path:
        """The cache file of one scans folder."""
        absolute = os.path.abspath(folder)
        digest = hashlib.sha1(absolute.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        parent, leaf = os.path.split(absolute)
        label = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{os.path.basename(parent)}_{leaf}")[-80:]
        return self.cache_dir / f"{label}-{digest}{CACHE_SUFFIX}"

    def _load(self, key: str) -> _CaseDayFile | None:
        """Open (or re-open, if it was replaced) the cache file of folder ``key``."""
        path = self.file_for(key)
        file = file_stamp(path)
        if file is None:
            return None
        current = self._open.get(key)
        if current is not None and current.file == file:
            return current
        try:
            case_day = _read_cache_file(path, file, key)
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.debug(f"scan cache file {str(path)!r} unusable ({error}); rebuilding it")
            return None
        self._remember(key, case_day)
        return case_day

    def _remember(self, key: str, case_day: _CaseDayFile) -> None:
        self._open[key] = case_day
        self._open.move_to_end(key)
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)  # the map closes once no returned view uses it

    # -- building --------------------------------------------------------------------------------

    def build(self, folder: str | os.PathLike) -> Path:
        """Decode every PNG of ``folder`` into its cache file (replacing any older one).

        PNGs that ``read_scan`` rejects are recorded as such (reading them raises their error);
        a PNG that changes while it is decoded is left out (reading it re-checks).

        Raises:
            OSError, UWMInputError: the cache file cannot be written.
        """
        folder = Path(folder)
        slices: dict[str, list[int]] = {}
        failed: dict[str, list[int]] = {}
        images = []
        offset = 0
        try:
            names = sorted(
                entry.name for entry in os.scandir(folder) if entry.name.endswith(".png")
            )
        except OSError:
            names = []
        for name in names:
            path = folder / name
            before = file_stamp(path)
            if before is None:
                continue
            try:
                image = self.reader(path)
            except UWMInputError:
                failed[name] = list(before)
                continue
            if file_stamp(path) != before:
                continue
            height, width = image.shape
            slices[name] = [*before, height, width, offset]
            images.append(image)
            offset += image.size
        header = json.dumps(
            {"folder": os.path.abspath(folder), "slices": slices, "failed": failed},
            separators=(",", ":"),
        ).encode("utf-8", "surrogateescape")
        start = len(CACHE_MAGIC) + 8 + len(header)
        padding = -start % _ALIGN
        target = self.file_for(folder)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp_path, open(tmp_path, "wb") as out:
            out.write(CACHE_MAGIC + struct.pack("<Q", len(header) + padding) + header)
            out.write(b" " * padding)  # JSON ignores trailing whitespace
            for image in images:
                out.write(np.ascontiguousarray(image, dtype="<u2").data)
        self.builds += 1
        return target

    def _rebuild(self, folder: Path) -> _CaseDayFile | None:
        try:
            self.build(folder)
        except (OSError, UWMInputError) as error:
            self._writable = False
            logger.warning(
                f"scan cache {str(self.cache_dir)!r} cannot be written ({error}); "
                "reading the PNGs directly"
            )
            return None
        return self._load(os.path.abspath(folder))

    def __getstate__(self) -> dict[str, Any]:
        # Maps are per process; a worker started by pickling (spawn) opens its own.
        state = self.__dict__.copy()
        state["_open"] = collections.OrderedDict()
        state["builds"] = 0  # a per-process count
        return state

    def __repr__(self) -> str:
        return f"ScanCache({str(self.cache_dir)!r}, open={len(self._open)})"


def _read_cache_file(path: Path, file: Stamp, folder: str) -> _CaseDayFile:
    """Parse and map one cache file; ``ValueError`` if it is not a complete one for ``folder``."""
    with open(path, "rb") as handle:
        prefix = handle.read(len(CACHE_MAGIC) + 8)
        if len(prefix) != len(CACHE_MAGIC) + 8 or not prefix.startswith(CACHE_MAGIC):
            raise ValueError("not a scan cache file")
        (length,) = struct.unpack("<Q", prefix[len(CACHE_MAGIC) :])
        raw = handle.read(length)
    if len(raw) != length:
        raise ValueError("header cut short")
    header = json.loads(raw.decode("utf-8", "surrogateescape"))
    if header["folder"] != folder:
        raise ValueError(f"made for {header['folder']!r}")
    slices, failed = dict(header["slices"]), dict(header["failed"])
    total = sum(entry[3] * entry[4] for entry in slices.values())
    start = len(prefix) + length
    if file[0] != start + 2 * total:
        raise ValueError(f"{file[0]} bytes, expected {start + 2 * total}")
    pixels = None
    if total:
        pixels = np.memmap(path, dtype="<u2", mode="r", offset=start, shape=(total,)).view(
            np.ndarray
        )
    return _CaseDayFile(path=path, file=file, slices=slices, failed=failed, pixels=pixels)


def cached_reader(cache_dir: str | os.PathLike | None, lru_bytes: int) -> Reader:
    """The reader to use: a :class:`ScanCache` in ``cache_dir`` if given, else a
    :class:`SliceLRU` of ``lru_bytes`` if positive, else plain :func:`read_scan`."""
    if cache_dir:
        return ScanCache(cache_dir)
    if lru_bytes > 0:
        return SliceLRU(lru_bytes)
    return read_scan
