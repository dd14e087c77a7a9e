"""The record writer: batches records to SQL off the request path, spools to disk when it can't.

Guarantees, given idempotent ``write_records`` (keyed by the gateway's UUID):

- ``submit`` never blocks the request and never raises.
- A batch the database refuses for connectivity reasons is written to a spool
  file (fsync'd, renamed into place) and replayed, oldest first, once the
  database answers again. A file is deleted only after its batch committed, so
  a crash in between makes the batch be written again, which inserts nothing.
- A record the database rejects as data (it should not happen) is parked in
  ``spool/rejected`` with an error log line, never dropped silently.
- ``close`` drains the queue (to SQL, or to the spool) before the process exits.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from gevent.monkey import is_object_patched
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from shared.records import CallRecord, prepare_writes, write_records

log = logging.getLogger(__name__)

SPOOL_SUFFIX = ".jsonl"
CLAIM_MARK = ".claimed."
RETRY_SECONDS = 1.0
SPOOL_LOOK_SECONDS = 1.0  # how often the writer looks for spool files to replay
CAUGHT_ERRORS = (DBAPIError, PoolTimeout)
# A backlog is written in batches of up to this many times ``batch_size``. A batch's
# cost is mostly its ~15 round trips to the database, and in a busy gevent worker each
# one waits its turn behind every call that is ready to run: with 250 streams open in a
# worker on two saturated cores, a batch of 200 took 1-6 s, fewer records a second than
# the calls made, and the queue (the worker's memory with it) grew without end.
BACKLOG_BATCH_FACTOR = 10
# A batch's Python work (showing each record to the metrics, building its rows, the
# COPY) lets the calls run every ``SLICE_SECONDS``. In a gevent worker the writer is a
# greenlet: a batch done in one go held every call ready to run until it was over (at
# 600 calls a second, a batch of ~120 records every 0.2 s, the tail of the latency at
# c=1). At most ``MAX_PAUSES`` a batch: in a saturated worker each pause waits out a
# turn of the event loop, and a batch must not fall behind for them.
SLICE_SECONDS = 0.0005
PAUSE_SECONDS = 0.0001
MAX_PAUSES = 16
# A pause that took longer than this found the worker saturated (every call it let run
# had work to do): the rest of the batch goes unpaced. Pausing on through a saturated
# loop kept each batch's records and rows longer, and under the realistic load a
# worker's memory levelled off 6-8 MiB higher.
BUSY_PAUSE_SECONDS = 0.005


class Pacer:
    """Called at each step of a batch: sleeps (gevent's sleep: the calls ready to run go
    first) once the batch has held the worker ``slice_seconds`` since it started or last
    paused, at most ``max_pauses`` times a batch (``begin``), and no more in a batch once
    a pause took longer than ``BUSY_PAUSE_SECONDS``.

    Only where ``time.sleep`` is gevent's (or a ``sleep`` is given): a writer that is a
    real thread is preempted by the interpreter anyway, and each sleep would cost it a
    wait for the GIL behind every busy thread (a gthread worker under the realistic load
    fell behind with them)."""

    def __init__(
        self,
        slice_seconds: float = SLICE_SECONDS,
        max_pauses: int = MAX_PAUSES,
        sleep: Callable[[float], None] | None = None,  # None: ``time.sleep`` as patched now
    ) -> None:
        self._slice = slice_seconds
        self._max_pauses = max_pauses
        self._sleep = sleep
        self._since = 0.0
        self._left = 0
        self.pauses = 0  # over the writer's life

    def begin(self) -> None:
        self._since = time.perf_counter()
        # Asked at each batch: gevent patches ``time.sleep`` after this is imported.
        cooperative = self._sleep is not None or is_object_patched("time", "sleep")
        self._left = self._max_pauses if cooperative else 0

    def __call__(self) -> None:
        if self._left and time.perf_counter() - self._since >= self._slice:
            self._left -= 1
            self.pauses += 1
            paused = time.perf_counter()
            (self._sleep or time.sleep)(PAUSE_SECONDS)
            self._since = time.perf_counter()
            if self._since - paused > BUSY_PAUSE_SECONDS:  # a saturated worker: go on unpaced
                self._left = 0


@dataclass(slots=True)
class _FlushMark:
    done: threading.Event


@dataclass(slots=True)
class _SeenMark:
    done: threading.Event


class RecordWriter:
    """One per process. Thread-safe ``submit``; a single writer thread does the rest."""

    def __init__(
        self,
        engine: Engine,
        spool_dir: Path,
        *,
        batch_size: int = 200,
        flush_seconds: float = 0.2,
        write: Callable[[Engine, Sequence[CallRecord]], None] = write_records,
    ) -> None:
        self._engine = engine
        self._spool_dir = spool_dir
        self._rejected_dir = spool_dir / "rejected"
        self._batch_size = batch_size
        self._flush_seconds = flush_seconds
        self._pacer = Pacer()
        self._writes_records = write is write_records
        # The default writer paces its rows too; another ``write`` is called as it is.
        self._write: Callable[[Engine, Sequence[CallRecord]], None] = (
            partial(write_records, pause=self._pacer) if self._writes_records else write
        )
        self._queue: queue.SimpleQueue[CallRecord | _FlushMark | _SeenMark | None] = (
            queue.SimpleQueue()
        )
        self._observers: list[Callable[[CallRecord], None]] = []
        # Set to end a batch's gathering early: a flush, a scrape, close, a full batch.
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._is_db_down = False
        self._next_retry = 0.0
        self._next_spool_look = 0.0
        self._closed = False
        self.written_count = 0
        self.spooled_count = 0

    # -- public ---------------------------------------------------------------------

    def submit(self, record: CallRecord) -> None:
        self._queue.put(record)
        if self._queue.qsize() >= self._batch_size:
            self._wake.set()

    def observe_with(self, observer: Callable[[CallRecord], None]) -> None:
        """Show ``observer`` (the metrics) every record, in the writer thread, as it is
        taken off the queue, before it is written. The calls do not wait for it, and one
        thread doing all of it never contends with the others for the observer's locks.
        An observer that raises is logged; the record is written all the same."""
        self._observers.append(observer)

    def seen(self, timeout: float = 1.0) -> bool:
        """Wait until every record submitted before this call has been shown to the
        observers (a metrics scrape then counts every call answered before it). False if
        that took longer than ``timeout`` (the writer is busy with a slow write)."""
        return self._reached(_SeenMark(threading.Event()), timeout)

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def is_db_down(self) -> bool:
        return self._is_db_down

    def spool_files(self) -> list[Path]:
        if not self._spool_dir.exists():
            return []
        return sorted(self._spool_dir.glob("*" + SPOOL_SUFFIX))

    def start(self) -> None:
        """Start the writer thread in this process (call again after a fork)."""
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        self._reclaim_orphans()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="record-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every record submitted before this call is written or spooled."""
        return self._reached(_FlushMark(threading.Event()), timeout)

    def _reached(self, mark: _FlushMark | _SeenMark, timeout: float) -> bool:
        """Queue ``mark`` behind what was submitted so far and wait for the writer thread
        to reach it (without the thread: whether nothing is left to reach)."""
        if self._thread is None or not self._thread.is_alive():
            return self.queue_depth == 0
        self._queue.put(mark)
        self._wake.set()  # no gathering to sleep out first
        return mark.done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Drain the queue and stop the thread. Records left go to the spool."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._wake.set()
            self._thread.join(timeout)
        leftovers = self._drain_nowait()
        if leftovers:
            self._spool(leftovers)

    # -- writer thread -------------------------------------------------------------

    def _run(self) -> None:
        if self._writes_records:
            try:
                prepare_writes(self._engine)
            except Exception:  # built at the first batch instead
                log.exception("event=record_writer_prepare_failed")
        while True:
            batch, marks, stop = self._take_batch()
            try:
                if batch:
                    self._write_or_spool(batch)
                now = time.monotonic()
                # The spool is shared by the workers: look for files (a directory listing)
                # once a second, not at every batch.
                if now >= self._next_spool_look and (
                    not self._is_db_down or now >= self._next_retry
                ):
                    self._next_spool_look = now + SPOOL_LOOK_SECONDS
                    self._replay_spool()
            except Exception:  # the thread must outlive any one failure
                log.exception("event=record_writer_error")
            finally:
                for mark in marks:
                    mark.done.set()
            if stop:
                return

    def _take_batch(self) -> tuple[list[CallRecord], list[_FlushMark], bool]:
        """Wait for a record, let the batch gather for ``flush_seconds``, then take what
        queued meanwhile. The calls queue their records without waking this thread for
        each one (every wake-up is a switch of the GIL away from them); a flush, a
        scrape, ``close`` and a full batch (``batch_size``) end the gathering early. A
        batch takes everything queued, up to ``BACKLOG_BATCH_FACTOR`` full batches: a
        backlog is caught up in fewer, larger writes."""
        batch: list[CallRecord] = []
        marks: list[_FlushMark] = []
        wait = RETRY_SECONDS if self._is_db_down else self._flush_seconds
        try:
            item = self._queue.get(timeout=wait)
        except queue.Empty:
            return batch, marks, False
        if isinstance(item, CallRecord) and self._queue.qsize() < self._batch_size - 1:
            self._wake.wait(self._flush_seconds)
        self._wake.clear()
        self._pacer.begin()
        while True:
            if item is None:
                return batch, marks, True
            if isinstance(item, _FlushMark):
                marks.append(item)
                return batch, marks, False
            if isinstance(item, _SeenMark):
                item.done.set()
            else:
                self._show(item)
                self._pacer()
                batch.append(item)
                if len(batch) >= self._batch_size * BACKLOG_BATCH_FACTOR:
                    return batch, marks, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, marks, False

    def _show(self, record: CallRecord) -> None:
        for observer in self._observers:
            try:
                observer(record)
            except Exception:  # an observer's bug must cost no record (nor the thread)
                log.exception("event=record_observer_failed request_id=%s", record.id)

    def _drain_nowait(self) -> list[CallRecord]:
        records: list[CallRecord] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return records
            if isinstance(item, CallRecord):
                self._show(item)
                records.append(item)
            elif isinstance(item, (_FlushMark, _SeenMark)):
                item.done.set()

    def _write_or_spool(self, batch: list[CallRecord]) -> None:
        if self._is_db_down and time.monotonic() < self._next_retry:
            self._spool(batch)
            return
        try:
            self._write_checked(batch)
        except CAUGHT_ERRORS as exc:
            self._mark_down(exc)
            self._spool(batch)
        except Exception:  # a bug must not cost records: keep them on disk
            log.exception("event=record_write_failed records=%d", len(batch))
            self._spool(batch)

    def _write_checked(self, batch: Sequence[CallRecord]) -> None:
        """Write a batch; isolate records the database rejects as data."""
        try:
            self._write(self._engine, batch)
        except DBAPIError as exc:
            if _is_transient(exc):
                raise
            if len(batch) == 1:
                self._reject(batch[0], exc)
            else:
                for record in batch:
                    self._write_checked([record])
                return
        else:
            self.written_count += len(batch)
        if self._is_db_down:
            log.info("event=database_back")
        self._is_db_down = False

    def _mark_down(self, exc: Exception) -> None:
        if not self._is_db_down:
            log.warning("event=database_unavailable error=%s", type(exc).__name__)
        self._is_db_down = True
        self._next_retry = time.monotonic() + RETRY_SECONDS

    # -- spool ---------------------------------------------------------------------

    def _spool(self, batch: Sequence[CallRecord], directory: Path | None = None) -> Path:
        directory = directory or self._spool_dir
        directory.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp = directory / (name + ".tmp")
        with tmp.open("wb") as handle:
            for record in batch:
                handle.write(record.model_dump_json().encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        final = directory / (name + SPOOL_SUFFIX)
        tmp.rename(final)
        if directory == self._spool_dir:
            self.spooled_count += len(batch)
        return final

    def _replay_spool(self) -> None:
        for path in self.spool_files():
            claimed = path.with_name(path.name + CLAIM_MARK + str(os.getpid()))
            try:
                path.rename(claimed)
            except FileNotFoundError:
                continue  # another process took it
            try:
                records = [
                    CallRecord.model_validate_json(line)
                    for line in claimed.read_bytes().splitlines()
                    if line.strip()
                ]
            except ValueError:
                self._rejected_dir.mkdir(parents=True, exist_ok=True)
                claimed.rename(self._rejected_dir / path.name)
                log.error("event=spool_file_unreadable file=%s", path.name)
                continue
            try:
                self._write_checked(records)
            except CAUGHT_ERRORS as exc:
                claimed.rename(path)
                self._mark_down(exc)
                return
            claimed.unlink()
            self.spooled_count = max(0, self.spooled_count - len(records))
            log.info("event=spool_replayed records=%d file=%s", len(records), path.name)

    def _reclaim_orphans(self) -> None:
        """Put back files claimed by processes that died mid-replay."""
        for path in self._spool_dir.glob("*" + SPOOL_SUFFIX + CLAIM_MARK + "*"):
            pid = int(path.name.rsplit(".", 1)[-1])
            if pid == os.getpid() or not _is_alive(pid):
                path.rename(path.with_name(path.name.split(CLAIM_MARK, 1)[0]))
        for tmp in self._spool_dir.glob("*.tmp"):
            pid = int(tmp.name.split("-")[1])
            if not _is_alive(pid):
                tmp.unlink()

    def _reject(self, record: CallRecord, exc: Exception) -> None:
        path = self._spool([record], self._rejected_dir)
        log.error(
            "event=record_rejected id=%s error=%s parked=%s", record.id, type(exc).__name__, path
        )


def _is_transient(exc: DBAPIError) -> bool:
    """Connectivity trouble (retry later), as opposed to data the database refuses."""
    return isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
