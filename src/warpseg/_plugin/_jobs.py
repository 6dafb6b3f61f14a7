"""Run a warpseg job (a generator of Progress records) in a worker thread, with a real cancel.

The viewer's thread only receives progress records (at most ``PROGRESS_INTERVAL`` apart, and
every record that carries a preview) and, at the end, the finished value. Heavy post-processing
(``finish``) also runs in the worker thread, so the event loop never waits on the job.

The worker thread runs the job below the viewer's scheduling priority (the threads a method starts
inherit it) and takes its own priority back afterwards (napari's thread pool reuses it): on a
machine with few cores a job that keeps every core busy otherwise stretches each repaint of the
viewer several times over.

Cancel sets an event; the worker checks it after every progress record of the job, closes the
job (which stops the method's own threads or processes) and reports ``cancelled`` instead of a
result. Nothing reaches the viewer from a cancelled job. Finish sets another event: from then on
the worker sends :data:`~warpseg.methods.FINISH` into the job, and methods that can stop early
return their best result so far (marked partial), which is shown like any result.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from warpseg.methods.base import FINISH, Progress

PROGRESS_INTERVAL = 0.05  # seconds between two progress records sent to the viewer
JOB_NICENESS = 10  # how much lower than the viewer's the job threads' priority is (Linux)
CANCELLED = object()
JOB_MODULES = ("torch", "torch._dynamo", "scipy.ndimage", "SimpleITK", "monai.losses", "warpseg.engine", "warpseg.metrics",
               "warpseg.learning.losses", "warpseg.options", "napari.qt.threading")
"""What jobs import on first use (several seconds here). Loading a library holds the GIL for hundreds
of ms at a time, so imports inside a running job, or in the viewer's thread when *Run* is pressed
(the options parser, napari's worker module), stall the viewer: the widgets start importing these
in the background as soon as they open, while the user picks layers and options."""
_preloading: threading.Thread | None = None


def preload_job_modules() -> threading.Thread:
    """Import :data:`JOB_MODULES` in a background thread, once per process; the thread is returned
    (join it to wait until everything is imported)."""
    import importlib

    global _preloading
    if _preloading is None:
        _preloading = threading.Thread(target=lambda: [importlib.import_module(name) for name in JOB_MODULES],
                                       name="warpseg-preload", daemon=True)
        _preloading.start()
    return _preloading


def drive(make_job: Callable[[], Generator[Progress, None, Any]], finish: Callable[[Any], Any] | None,
          cancel: threading.Event, finish_early: threading.Event | None = None,
          interval: float = PROGRESS_INTERVAL) -> Generator[Progress, None, Any]:
    """Run ``make_job()`` to its end, passing on its progress (throttled) and returning
    ``finish(value)``; returns ``CANCELLED`` once ``cancel`` is set. Once ``finish_early`` is set,
    every step sends FINISH into the job (ignored by methods that cannot stop early)."""
    with priority_below_viewer():
        return (yield from _drive_job(make_job, finish, cancel, finish_early, interval))


def _drive_job(make_job, finish, cancel, finish_early, interval) -> Generator[Progress, None, Any]:
    job = make_job()
    last_sent, started = 0.0, False
    try:
        while True:
            if cancel.is_set():
                return CANCELLED
            try:
                wants_finish = started and finish_early is not None and finish_early.is_set()
                progress = job.send(FINISH) if wants_finish else next(job)
                started = True
            except StopIteration as stop:
                value = stop.value
                break
            now = time.monotonic()
            if progress.preview is not None or now - last_sent >= interval:
                last_sent = now
                yield progress
    finally:
        job.close()
    if cancel.is_set():
        return CANCELLED
    return finish(value) if finish is not None else value


@contextmanager
def priority_below_viewer() -> Iterator[None]:
    """Run the block in the calling thread at JOB_NICENESS below the viewer's (main thread's)
    priority, so the viewer gets the cores first; threads started inside inherit it. The thread's
    own priority comes back at the end where the system allows raising it again (root, or a
    permissive RLIMIT_NICE). Linux only: elsewhere nothing changes."""
    if not sys.platform.startswith("linux"):
        yield
        return
    thread = threading.get_native_id()
    before = os.getpriority(os.PRIO_PROCESS, thread)
    _set_priority(thread, min(19, os.getpriority(os.PRIO_PROCESS, os.getpid()) + JOB_NICENESS))
    try:
        yield
    finally:
        _set_priority(thread, before)


def _set_priority(thread: int, niceness: int) -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, thread, niceness)
    except OSError:  # refused: the thread keeps its priority
        pass


@dataclass
class ProgressClock:
    """Estimates the time left in the current stage from its fraction done."""

    stage: str = ""
    started: float = field(default_factory=time.monotonic)

    def eta(self, progress: Progress) -> float | None:
        """Seconds left in ``progress``'s stage, or None when unknown."""
        now = time.monotonic()
        if progress.stage != self.stage:
            self.stage, self.started = progress.stage, now
            return None
        fraction = progress.fraction
        if not fraction or fraction >= 1.0 or now - self.started < 0.5:
            return None
        return (now - self.started) * (1.0 - fraction) / fraction


class JobHandle:
    """A job running in a napari worker thread; ``cancel()`` stops it, ``finish_now()`` asks for its
    best result so far, ``running`` tells if it runs."""

    def __init__(self, make_job, *, finish=None, on_progress=None, on_done=None, on_error=None,
                 on_cancelled=None, on_finished=None) -> None:
        from napari.qt.threading import create_worker

        self.cancel_event, self.finish_event = threading.Event(), threading.Event()
        self.worker = create_worker(drive, make_job, finish, self.cancel_event, self.finish_event, _start_thread=False,
                                    _ignore_errors=True)  # on_error reports them
        if on_progress is not None:
            self.worker.yielded.connect(on_progress)

        def returned(value: Any) -> None:
            if value is CANCELLED:
                if on_cancelled is not None:
                    on_cancelled()
            elif on_done is not None:
                on_done(value)

        self.worker.returned.connect(returned)
        if on_error is not None:
            self.worker.errored.connect(on_error)
        if on_finished is not None:
            self.worker.finished.connect(on_finished)
        self._running = True
        self.worker.finished.connect(self._mark_finished)
        self.worker.start()

    def _mark_finished(self) -> None:
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    def cancel(self) -> None:
        self.cancel_event.set()

    def finish_now(self) -> None:
        """Ask the job for its best result so far (methods that can stop early)."""
        self.finish_event.set()


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"ETA {minutes}:{secs:02d}"
