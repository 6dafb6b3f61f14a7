"""Running a batch on Dask: a local cluster of worker processes, or any scheduler by its address."""
from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from warpseg.batch.pairs import BatchJob, ImageRow, PairRow
from warpseg.batch.summary import failed_record, is_finished, record_from_folder, write_summary
from warpseg.errors import WarpsegError

RowCallback = Callable[[dict[str, Any], int, int], None]
SUMMARY_FILE = "summary.csv"


@contextmanager
def open_client(scheduler: str | None = None, workers: int = 1, processes: bool | None = None) -> Iterator:
    """A Dask client: on ``scheduler`` (an address) or on a local cluster of ``workers`` workers.

    The local cluster listens on loopback only, has one thread per worker and no dashboard;
    its workers are processes unless ``processes`` is False (default: in-process for one worker).
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise WarpsegError("batch runs need Dask distributed; pip install distributed") from None
    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    if workers < 1:
        raise WarpsegError(f"--workers must be at least 1, not {workers}")
    in_processes = workers > 1 if processes is None else processes
    network = {"host": "127.0.0.1"} if in_processes else {}  # in-process workers need no network
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=in_processes, dashboard_address=None,
                      **network) as cluster, Client(cluster) as client:
        yield client


def run_batch(rows: list[PairRow] | list[ImageRow], job: BatchJob, out_dir: str | Path, *, client=None,
              scheduler: str | None = None, workers: int = 1, on_row: RowCallback | None = None
              ) -> list[dict[str, Any]]:
    """Register (pair rows) or segment (image rows) every row into ``out_dir/<id>/`` and write
    ``out_dir/summary.csv``; return the records.

    Rows whose ``result.json`` exists are skipped; the others run as one Dask task each, on
    ``client`` or on a client opened with :func:`open_client`. A failing row is recorded with
    its error and the others go on. ``on_row(record, done, total)`` is called as rows finish.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict[str, Any]] = {}
    report = _counter(records, len(rows), on_row)
    todo = []
    for row in rows:
        if is_finished(out_dir / row.id):
            report(record_from_folder(row.id, out_dir / row.id, "skipped"))
        else:
            todo.append(row)
    if todo and client is None:
        with open_client(scheduler, workers) as opened:
            _run_rows(opened, todo, job, out_dir, report)
    elif todo:
        _run_rows(client, todo, job, out_dir, report)
    ordered = [records[row.id] for row in rows]
    write_summary(out_dir / SUMMARY_FILE, ordered)
    return ordered


def _run_rows(client, rows: list, job: BatchJob, out_dir: Path, report: Callable) -> None:
    """Submit one task per row and report each record as its task ends (a lost task as failed)."""
    from distributed import as_completed

    from warpseg.batch.task import register_row, segment_row

    batch_token = uuid.uuid4().hex[:8]
    task, kind = (segment_row, "segment") if isinstance(rows[0], ImageRow) else (register_row, "register")
    futures = {client.submit(task, row, job, str(out_dir), key=f"warpseg-{kind}-{row.id}-{batch_token}",
                             pure=False): row for row in rows}
    for future in as_completed(futures):
        row = futures[future]
        try:
            record = future.result()
        except Exception as error:  # e.g. KilledWorker: the task took down too many workers
            record = failed_record(row.id, error)
        future.release()
        report(record)


def _counter(records: dict, total: int, on_row: RowCallback | None) -> Callable[[dict[str, Any]], None]:
    """A function that stores a record and passes it on with the running count."""
    def report(record: dict[str, Any]) -> None:
        records[record["id"]] = record
        if on_row is not None:
            on_row(record, len(records), total)

    return report
