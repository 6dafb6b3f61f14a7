"""The work of one row, run on a Dask worker: read, register or segment, write the results atomically."""
from __future__ import annotations

import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

from warpseg.batch.pairs import BatchJob, ImageRow, PairRow
from warpseg.batch.summary import failed_record, is_finished, record_from_folder, record_from_summary


def worker_name() -> str:
    """``host:pid`` of the process running the task."""
    return f"{socket.gethostname()}:{os.getpid()}"


def register_row(row: PairRow, job: BatchJob, out_dir: str) -> dict[str, Any]:
    """Register one row into ``out_dir/<id>/`` and return its summary record; never raises."""
    from warpseg.engine import write_result

    return run_row(row.id, out_dir, lambda: register_pair(row, job), write_result)


def segment_row(row: ImageRow, job: BatchJob, out_dir: str) -> dict[str, Any]:
    """Segment one row into ``out_dir/<id>/`` and return its summary record; never raises."""
    from warpseg.engine import write_segmentation

    return run_row(row.id, out_dir, lambda: segment_image(row, job), write_segmentation)


def run_row(row_id: str, out_dir: str, compute, write) -> dict[str, Any]:
    """``write(compute(), folder)`` once for ``out_dir/<row_id>/``; the row's record, failures included.

    A row whose ``result.json`` is already there (an earlier attempt of this task, on a worker that
    died before reporting) is not computed again.
    """
    folder = Path(out_dir) / row_id
    if is_finished(folder):
        return record_from_folder(row_id, folder, "ok")
    try:
        result = compute()
        result.details["batch"] = {"id": row_id, "worker": worker_name()}
        write_once(result, folder, write)
    except Exception as error:  # a failing row is recorded, never stops the batch
        return failed_record(row_id, error, worker_name())
    return record_from_summary(row_id, result.summary(), "ok", worker_name())


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


def segment_image(row: ImageRow, job: BatchJob):
    """The :class:`SegmentationResult` of one row (scored when the row has reference labels)."""
    from warpseg.engine import run_to_end, segment
    from warpseg.io import read_volume

    atlas = ((read_volume(row.atlas, labels=False), read_volume(row.atlas_labels, labels=True))
             if row.atlas else None)
    reference = read_volume(row.labels, labels=True) if row.labels else None
    return run_to_end(segment(read_volume(row.image, labels=False), job.method, atlas=atlas, reference=reference,
                              weights=job.weights, device=job.device, options=dict(job.options)))


def write_once(result, folder: Path, write) -> None:
    """``write`` the results beside ``folder`` and rename them into place: all files appear at once.

    The writers move files in one by one; renaming the whole folder means a worker killed
    mid-write never leaves a ``result.json`` without its images. When another attempt got there
    first, this one's files are dropped.
    """
    staging = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}"
    try:
        write(result, staging)
        try:
            os.rename(staging, folder)  # replaces an empty folder; fails on one with files in it
        except OSError:
            if not is_finished(folder):  # a folder of other files: add ours to it
                write(result, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def warm_up() -> str:
    """Import the registration stack on a worker (run once per worker before timing)."""
    import warpseg.engine  # noqa: F401
    import warpseg.methods  # noqa: F401

    return worker_name()
