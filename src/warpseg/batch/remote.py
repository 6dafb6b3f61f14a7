"""One registration on a Dask cluster, driven like a local job: progress streams back, closing cancels.

:func:`remote_register` takes the arguments of :func:`warpseg.engine.register` and returns a
generator with the same contract, so the napari widget (or any caller) can send a job from a
laptop to a GPU worker by giving a scheduler address. The task runs ``register()`` on the worker
and puts its progress records on a Dask ``Queue`` (at most ``PROGRESS_INTERVAL`` apart); closing
the local generator sets a Dask ``Event`` that the task checks after every record, so the remote
job is closed too (its methods stop their threads and processes as they do locally).
"""
from __future__ import annotations

import time
import uuid
from typing import Any

from warpseg.errors import WarpsegError
from warpseg.methods.base import Progress

PROGRESS_INTERVAL = 0.1  # seconds between two progress records sent back
POLL_SECONDS = 0.2
CONNECT_SECONDS = 10


def remote_register(scheduler: str, *args: Any, **kwargs: Any):
    """``register(*args, **kwargs)`` on the Dask cluster at ``scheduler``; a RegistrationJob."""
    try:
        from distributed import Client, Event, Queue
    except ImportError:
        raise WarpsegError("running on a Dask scheduler needs Dask distributed; pip install distributed") from None
    try:
        client = Client(scheduler, timeout=CONNECT_SECONDS)
    except (OSError, TimeoutError) as error:
        raise WarpsegError(f"cannot reach the Dask scheduler at {scheduler!r} ({error}); check the address "
                           "(e.g. tcp://host:8786) and that the scheduler runs") from None
    key = uuid.uuid4().hex
    progress, stop = Queue(f"warpseg-progress-{key}", client=client), Event(f"warpseg-stop-{key}", client=client)
    future = client.submit(run_on_worker, key, args, kwargs, key=f"warpseg-register-{key}", pure=False)
    yield Progress("remote", 0, None, f"sent to {scheduler}")
    try:
        while True:
            records = progress.get(batch=True)
            yield from records
            if future.done() and not records:
                break
            if not records:
                time.sleep(POLL_SECONDS)
        return future.result()
    except GeneratorExit:
        stop.set()
        future.cancel()
        raise
    finally:
        client.close()


def run_on_worker(key: str, args: tuple, kwargs: dict):
    """The task: run ``register()`` here, publishing progress, until done or told to stop."""
    from distributed import Event, Queue

    from warpseg.engine.register import register

    progress, stop = Queue(f"warpseg-progress-{key}"), Event(f"warpseg-stop-{key}")
    job = register(*args, **kwargs)
    last_sent = 0.0
    try:
        while not stop.is_set():
            try:
                record = next(job)
            except StopIteration as finished:
                return finished.value
            now = time.monotonic()
            if record.preview is not None or now - last_sent >= PROGRESS_INTERVAL:
                last_sent = now
                progress.put(record)
        return None
    finally:
        job.close()
