"""The work of one row, run on a Dask worker: read, register, write the results atomically."""
from __future__ import annotations

import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

from warpseg.batch.pairs import BatchJob, PairRow
from warpseg.batch.summary import failed_record, is_finished, record_from_folder, record_from_summary


def worker_name() -> str:
    """``host:pid`` of the process running the task."""
    return f"{socket.gethostname()}:{os.getpid()}"


def register_row(row: PairRow, job: BatchJob, out_dir: str) -> dict[str, Any]:
    """Register one row into ``out_dir/<id>/`` and return its summary record; never raises.

    A row whose ``result.json`` is already there (an earlier attempt of this task, on a worker that
    died before reporting) is not registered again.
    """
    folder = Path(out_dir) / row.id
    if is_finished(folder):
        return record_from_folder(row.id, folder, "ok")
    try:
        result = register_pair(row, job)
        result.details["batch"] = {"id": row.id, "worker": worker_name()}
        write_result_once(result, folder)
    except Exception as error:  # a failing row is recorded, never stops the batch
        return failed_record(row.id, error, worker_name())
    return record_from_summary(row.id, result.summary(), "ok", worker_name())


def register_pair(row: PairRow, job: BatchJob):
    """The :class:`RegistrationResult` of one row."""
    from warpseg.engine import register, run_to_end
    from warpseg.io import read_volume

    def labels(path: str | None):
        return read_volume(path, labels=True) if path else None

    job_generator = register(read_volume(row.moving, labels=False), read_volume(row.fixed, labels=False),
                             job.method, moving_labels=labels(row.moving_labels),
                             fixed_labels=labels(row.fixed_labels), weights=job.weights, device=job.device,
                             options=dict(job.options))
    return run_to_end(job_generator)


def write_result_once(result, folder: Path) -> None:
    """Write the results beside ``folder`` and rename them into place: all files appear at once.

    ``write_result`` moves files in one by one; renaming the whole folder means a worker killed
    mid-write never leaves a ``result.json`` without its images. When another attempt got there
    first, this one's files are dropped.
    """
    from warpseg.engine import write_result

    staging = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}"
    try:
        write_result(result, staging)
        try:
            os.rename(staging, folder)  # replaces an empty folder; fails on one with files in it
        except OSError:
            if not is_finished(folder):  # a folder of other files: add ours to it
                write_result(result, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def warm_up() -> str:
    """Import the registration stack on a worker (run once per worker before timing)."""
    import warpseg.engine  # noqa: F401
    import warpseg.methods  # noqa: F401

    return worker_name()
