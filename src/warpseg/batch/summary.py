"""One record per row of a batch, and the summary CSV they make."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

SUMMARY_COLUMNS = ("id", "status", "error", "dice_before", "dice_mean", "hd95_mean", "folding_percent",
                   "seconds_registration", "seconds_total", "worker")
METRIC_COLUMNS = SUMMARY_COLUMNS[3:9]
RESULT_FILE = "result.json"


def is_finished(folder: Path) -> bool:
    """Whether a row's output folder holds its result (written last, atomically, by write_result)."""
    return (Path(folder) / RESULT_FILE).is_file()


def record_from_summary(row_id: str, summary: dict[str, Any], status: str, worker: str = "") -> dict[str, Any]:
    """A summary record from a ``result.json`` dictionary (a segmentation's ``seconds`` is its total)."""
    record = {"id": row_id, "status": status, "error": "", "worker": worker}
    record.update({key: summary.get(key) for key in METRIC_COLUMNS})
    if "seconds" in summary:
        record["seconds_total"] = summary["seconds"]
    return record


def record_from_folder(row_id: str, folder: Path, status: str) -> dict[str, Any]:
    """The record of a row whose ``result.json`` already exists (the worker that wrote it, if known)."""
    summary = json.loads((Path(folder) / RESULT_FILE).read_text())
    worker = (summary.get("details") or {}).get("batch", {}).get("worker", "")
    return record_from_summary(row_id, summary, status, worker)


def failed_record(row_id: str, error: BaseException, worker: str = "") -> dict[str, Any]:
    """The record of a row that raised ``error``: its type and message on one line."""
    message = " ".join(str(error).split())
    record = {key: None for key in SUMMARY_COLUMNS}
    record.update(id=row_id, status="failed", error=f"{type(error).__name__}: {message}", worker=worker)
    return record


def write_summary(path: Path, records: list[dict[str, Any]]) -> Path:
    """Write the records as CSV (columns :data:`SUMMARY_COLUMNS`), atomically."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial")
    with temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        for record in records:
            writer.writerow({key: _cell(record.get(key)) for key in SUMMARY_COLUMNS})
    os.replace(temporary, path)
    return path


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
