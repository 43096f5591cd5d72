"""Direct (O_DIRECT) reads of scratch files on the host's storage: the measuring instrument.

Both ``calibrate-host`` and ``validate-io`` read through :class:`ParallelReader`, so a profile
measured by one describes exactly the I/O path the other replays on (Python threads issuing
``os.preadv`` on one O_DIRECT descriptor; no io_uring binding is available here).

Scratch files never outlive the process: :func:`scratch_file` creates the file, opens it and
unlinks its name at once, so the data lives only as long as the open descriptor — even SIGKILL
leaves nothing behind. SIGINT and SIGTERM are turned into exceptions while it is open so that the
``finally`` blocks close the descriptor (which frees the blocks).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import mmap
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from sparsesim.errors import InputError
from sparsesim.simulator.units import BYTES, format_quantity

SCRATCH_PREFIX = ".sparsesim-scratch-"
# Filesystems that live in memory: O_DIRECT may open there (tmpfs accepts it since Linux 6.6), but a
# read never touches a storage device, so a measurement there says nothing about flash.
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs", "devtmpfs", "hugetlbfs"})
FREE_SPACE_RESERVE = 64 << 20   # bytes left free for the filesystem's metadata and other users
FILL_CHUNK = 4 << 20            # bytes written per O_DIRECT write when filling a scratch file
PAGE = mmap.PAGESIZE


def filesystem_of(directory: Path) -> tuple[str, str, str]:
    """(mount point, filesystem type, source device) of the mount that holds ``directory``."""
    target = os.path.realpath(directory)
    best = ("/", "unknown", "unknown")
    with open("/proc/self/mountinfo", encoding="utf-8") as mounts:
        for line in mounts:
            fields, _, tail = line.partition(" - ")
            mount_point = fields.split()[4].replace("\\040", " ")
            fstype, source = (tail.split() + ["unknown", "unknown"])[:2]
            inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
            # Later lines are mounted on top of earlier ones: >= keeps the last of equal length.
            if inside and len(mount_point) >= len(best[0]):
                best = (mount_point, fstype, source)
    return best


def check_directory(directory: str | os.PathLike) -> Path:
    """``directory`` as a Path, or an InputError if it cannot hold a measured scratch file."""
    path = Path(directory)
    if not path.is_dir():
        raise InputError(f"--dir {path}: not an existing directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"--dir {path}: not writable")
    _, fstype, _ = filesystem_of(path)
    if fstype in MEMORY_FILESYSTEMS:
        raise InputError(f"--dir {path}: is on {fstype}, a memory filesystem: direct reads there never reach a "
                         f"storage device; give a directory on the disk you want to measure")
    return path


def check_free_space(directory: Path, needed: int, what: str, limit: int | None = None) -> None:
    """Refuse, before writing anything, a file of ``needed`` bytes that would not fit."""
    if limit is not None and needed > limit:
        raise InputError(f"{what} needs {format_quantity(needed, BYTES)}, more than --max-disk "
                         f"{format_quantity(limit, BYTES)}; raise --max-disk or use a smaller trace")
    free = shutil.disk_usage(directory).free
    if needed + FREE_SPACE_RESERVE > free:
        raise InputError(f"{what} needs {format_quantity(needed, BYTES)} but {directory} has only "
                         f"{format_quantity(free, BYTES)} free (keeping {format_quantity(FREE_SPACE_RESERVE, BYTES)} "
                         f"in reserve)")


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """While active, SIGINT raises KeyboardInterrupt and SIGTERM SystemExit(143), so cleanup runs.

    Needed because a shell starts background jobs with SIGINT ignored and Python's default SIGTERM
    action kills without running ``finally``.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame) -> None:
        raise KeyboardInterrupt

    def terminate(signum: int, frame) -> None:
        raise SystemExit(128 + signum)

    previous = {signal.SIGINT: signal.signal(signal.SIGINT, interrupt),
                signal.SIGTERM: signal.signal(signal.SIGTERM, terminate)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def aligned_buffer(size: int) -> mmap.mmap:
    """Page-aligned anonymous memory: O_DIRECT needs buffers aligned to the logical block size."""
    return mmap.mmap(-1, max(PAGE, -(-size // PAGE) * PAGE))


def _open_direct(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o600)
    except OSError as e:
        if e.errno == errno.EINVAL:
            raise InputError(f"--dir {path.parent}: this filesystem does not support O_DIRECT, so reads cannot "
                             f"bypass the page cache; give a directory on a disk filesystem (ext4, xfs, ...)") from None
        raise InputError(f"--dir {path.parent}: cannot create a scratch file: {e.strerror}") from None


def direct_alignment(fd: int) -> int:
    """The smallest offset/size granularity O_DIRECT reads accept on ``fd`` (the logical block size)."""
    buf = aligned_buffer(PAGE)
    for align in (512, 1024, 2048, 4096):
        try:
            os.preadv(fd, [memoryview(buf)[:align]], align)
            return align
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
    return PAGE


def _fill(fd: int, size: int, seed: int) -> None:
    """Write ``size`` bytes of data that no layer below can treat as a hole, zeros or duplicates.

    One random chunk is generated (fast), then every 4 KiB block of every chunk gets a unique first
    word, so the file has real, distinct blocks without paying for size bytes of randomness.
    """
    rng = np.random.default_rng(seed)
    buf = aligned_buffer(FILL_CHUNK)
    words = np.frombuffer(buf, dtype=np.uint64)
    words[:] = rng.integers(0, 2**63, words.size, dtype=np.uint64)
    stride = 4096 // 8
    base = words[::stride].copy()
    blocks_per_chunk = base.size
    written = 0
    for chunk in itertools.count():
        if written >= size:
            break
        words[::stride] = base ^ np.arange(chunk * blocks_per_chunk, (chunk + 1) * blocks_per_chunk, dtype=np.uint64)
        n = min(FILL_CHUNK, size - written)
        done = os.pwrite(fd, memoryview(buf)[:n], written)
        if done != n:
            raise OSError(errno.EIO, f"short write ({done} of {n} bytes)")
        written += n
    os.fsync(fd)


@contextlib.contextmanager
def scratch_file(directory: Path, size: int, what: str, *, seed: int = 0,
                 max_disk: int | None = None) -> Iterator[int]:
    """A file of ``size`` bytes of real data in ``directory``, open for O_DIRECT reads; yields the fd.

    ``size`` must be a multiple of 4096 (O_DIRECT writes). The name is unlinked right after the
    open, so nothing is left behind however the process ends.
    """
    check_free_space(directory, size, what, max_disk)
    with signals_raise():
        # mktemp only proposes a name: O_EXCL in the open makes the creation race-free.
        name = Path(tempfile.mktemp(prefix=SCRATCH_PREFIX, dir=directory))
        fd = _open_direct(name)
        try:
            name.unlink()
            _fill(fd, size, seed)
            yield fd
        finally:
            os.close(fd)


class ParallelReader:
    """Reads batches of extents from an O_DIRECT fd with ``concurrency`` reads outstanding.

    The calling thread reads too, and ``concurrency - 1`` helper threads wait on C-level locks, so
    handing out a batch costs a few microseconds and a batch of one request costs no handoff at all.
    Requests are taken in order from a shared counter: at most ``concurrency`` are in flight. An
    interrupted or failed read stops the reader: close it.
    """

    def __init__(self, fd: int, concurrency: int, max_request: int):
        if concurrency < 1:
            raise InputError(f"concurrency must be >= 1, got {concurrency}")
        self.fd = fd
        self.concurrency = concurrency
        self.max_request = max_request
        self._buffers = [aligned_buffer(max_request) for _ in range(concurrency)]
        self._offsets: Sequence[int] = ()
        self._sizes: Sequence[int] = ()
        self._next: Iterator[int] = iter(())
        self._errors: list[BaseException] = []
        self._stop = False
        self._start = [threading.Lock() for _ in range(concurrency - 1)]
        self._done = [threading.Lock() for _ in range(concurrency - 1)]
        self._threads = []
        for i in range(concurrency - 1):
            self._start[i].acquire()
            self._done[i].acquire()
            thread = threading.Thread(target=self._helper, args=(i,), daemon=True, name=f"direct-read-{i}")
            thread.start()
            self._threads.append(thread)

    def _read_share(self, buffer: mmap.mmap) -> None:
        view = memoryview(buffer)
        offsets, sizes, n = self._offsets, self._sizes, len(self._offsets)
        for i in self._next:  # itertools.count: next() is atomic under the GIL
            if i >= n or self._stop:
                return
            got = os.preadv(self.fd, [view[:sizes[i]]], offsets[i])
            if got != sizes[i]:
                raise OSError(errno.EIO, f"short direct read at offset {offsets[i]}: {got} of {sizes[i]} bytes")

    def _helper(self, i: int) -> None:
        while True:
            self._start[i].acquire()
            try:
                if self._stop:
                    return
                self._read_share(self._buffers[i + 1])
            except BaseException as e:  # handed to the caller, which re-raises it
                self._errors.append(e)
            finally:
                # Once per start, stopping included: an interrupted read() waits for it. After an
                # interruption nobody may wait any more, so the lock can already be free.
                with contextlib.suppress(RuntimeError):
                    self._done[i].release()

    def read(self, offsets: Sequence[int], sizes: Sequence[int]) -> float:
        """Read every extent (aligned offsets and sizes) and return the wall-clock seconds it took."""
        if not len(offsets):
            return 0.0
        helpers = min(self.concurrency, len(offsets)) - 1
        self._offsets, self._sizes, self._next = offsets, sizes, itertools.count()
        self._errors.clear()
        started = 0
        t0 = time.perf_counter()
        try:
            for i in range(helpers):
                self._start[i].release()
                started += 1
            self._read_share(self._buffers[0])
        except BaseException:
            self._stop = True   # e.g. KeyboardInterrupt: helpers drop the rest of the batch
            raise
        finally:
            for i in range(started):
                self._done[i].acquire()
        elapsed = time.perf_counter() - t0
        if self._errors:
            raise self._errors[0]
        return elapsed

    def close(self) -> None:
        """Stop the helpers; reads in flight finish first (each takes well under a second)."""
        self._stop = True
        self._next = iter(())
        for lock in self._start:
            with contextlib.suppress(RuntimeError):
                lock.release()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> "ParallelReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
