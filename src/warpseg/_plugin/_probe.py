"""How responsive the viewer stays while the Register widget works: a timer that records gaps.

A ``QTimer`` asks to run every ``TICK_MS``; the longest time between two of its runs is the
longest the Qt event loop was blocked (plus one tick). Measured separately while the job runs in
its worker thread and while the result layers are being added.

Run is pressed once the viewer is idle, as a user presses it: a window that has just been shown
spends its first second painting (napari's canvas, the dock, the layer list; under Xvfb and Mesa
single paints of 100-200 ms), and those stalls are the viewer's start-up, not the job's.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

TICK_MS = 5
IDLE_GAP_MS = 20  # the viewer counts as idle once no gap is longer than this...
IDLE_SECONDS = 0.5  # ...for this long


@dataclass
class Responsiveness:
    run_click_ms: float  # how long pressing Run itself held the event loop (checks, the live layer)
    longest_gap_running_ms: float
    longest_gap_adding_ms: float
    seconds_running: float
    seconds_adding: float


def probe_registration(widget, timeout: float = 600.0) -> Responsiveness:
    """Start ``widget``'s registration and turn the event loop until it is done, timing every gap.

    The widget's background imports are finished first, as they are when a user has spent a few
    seconds picking layers (see :func:`~warpseg._plugin._jobs.preload_job_modules`), and the
    viewer is left to become idle (:func:`wait_until_idle`).
    """
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from warpseg._plugin._jobs import preload_job_modules

    preload_job_modules().join()
    application = QApplication.instance()
    wait_until_idle(application, timeout)
    gaps = {"running": 0.0, "adding": 0.0}
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        phase = "running" if widget.job is not None and widget.job.running else "adding"
        gaps[phase] = max(gaps[phase], now - last[0])
        last[0] = now

    timer = QTimer()
    timer.setInterval(TICK_MS)
    timer.timeout.connect(tick)
    timer.start()
    started = time.perf_counter()
    job = widget.start()
    last[0] = time.perf_counter()
    click = last[0] - started
    if job is None:
        timer.stop()
        raise RuntimeError(f"the registration did not start: {widget.log.value}")
    while job.running and time.perf_counter() - started < timeout:
        application.processEvents()
        time.sleep(0.001)
    ran = time.perf_counter() - started
    while widget.busy and time.perf_counter() - started < timeout:
        application.processEvents()
        time.sleep(0.001)
    timer.stop()
    return Responsiveness(1000 * click, 1000 * gaps["running"], 1000 * gaps["adding"], ran, time.perf_counter() - started - ran)


def wait_until_idle(application, timeout: float = 60.0) -> float:
    """Turn the event loop until no gap exceeds IDLE_GAP_MS for IDLE_SECONDS; returns the seconds
    waited. Raises TimeoutError when the viewer never settles within ``timeout``."""
    started = last = quiet_since = time.perf_counter()
    while True:
        application.processEvents()
        time.sleep(0.002)
        now = time.perf_counter()
        if now - last > IDLE_GAP_MS / 1000:
            quiet_since = now
        last = now
        if now - quiet_since >= IDLE_SECONDS:
            return now - started
        if now - started > timeout:
            raise TimeoutError(f"the viewer did not become idle within {timeout:.0f} s")
