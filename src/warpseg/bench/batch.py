"""Throughput of ``warpseg batch register`` on 1 vs 2 local worker processes, and a cluster projection.

Writes the ``batch`` section of BENCHMARKS.md. The projection to a GPU cluster is arithmetic on
stated assumptions (GPU time per pair, bandwidth) plus what was measured here: the data volume of
a real 3D pair and Dask's per-task overhead.
"""
from __future__ import annotations

import datetime
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from warpseg.batch import BatchJob, open_client, read_pairs, run_batch
from warpseg.bench.pairs import default_data_dir, dev_pairs
from warpseg.bench.report import machine_description, replace_section
from warpseg.errors import WarpsegError

OVERHEAD_TASKS = 200


@dataclass(frozen=True)
class Projection:
    """The cluster and the assumptions the projection rests on."""

    pairs: int = 10_000
    gpus: int = 100
    gpu_seconds_per_pair: float = 2.0  # ASSUMED: one 3D pair on one GPU (inference, warps, metrics)
    bandwidth_mb_s: float = 100.0  # ASSUMED: storage to one worker and back, MB/s


def run_batch_benchmark(data_dir: Path | None, output: Path, *, method: str = "sitk-affine",
                        options: dict | None = None, rows: int = 12, workers=(1, 2),
                        projection: Projection = Projection()) -> dict:
    """Time a batch of the 2D dev pairs (repeated to ``rows``) on each worker count; write the section."""
    data_dir = (Path(data_dir) if data_dir else default_data_dir()).resolve()
    job = BatchJob(method, dict(options or {}), device="cpu")
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="warpseg-batch-bench-") as scratch:
        pairs = read_pairs(write_repeated_pairs(data_dir, rows, Path(scratch) / "pairs.csv"))
        measured = {count: measure_throughput(pairs, job, Path(scratch) / f"out-{count}", count) for count in workers}
    transfer = pair_transfer_megabytes(data_dir)
    body = render_section(method, job.options, rows, measured, transfer, projection, load)
    replace_section(Path(output), "batch", body)
    return {"measured": measured, "transfer": transfer}


def write_repeated_pairs(data_dir: Path, rows: int, path: Path) -> Path:
    """A pairs CSV of the 2D dev pairs repeated to ``rows`` rows, each with its own id."""
    pairs = dev_pairs(data_dir, 2)
    lines = ["moving,fixed,moving_labels,fixed_labels,id"]
    for index in range(rows):
        pair = pairs[index % len(pairs)]
        name = pair.name.replace("->", "_to_")
        lines.append(f"{pair.moving},{pair.fixed},{pair.moving_labels},{pair.fixed_labels},{index:03d}_{name}")
    path.write_text("\n".join(lines) + "\n")
    return path


def measure_throughput(pairs, job: BatchJob, out: Path, workers: int) -> dict:
    """Start ``workers`` worker processes, warm them up, then time the batch and Dask's per-task cost."""
    from warpseg.batch.task import warm_up

    started = time.perf_counter()
    with open_client(workers=workers, processes=True) as client:
        client.run(warm_up)
        ready = time.perf_counter()
        records = run_batch(pairs, job, out, client=client)
        finished = time.perf_counter()
        overhead = per_task_overhead(client)
    failed = [record for record in records if record["status"] != "ok"]
    if failed:
        raise WarpsegError(f"benchmark batch had failing rows: {failed[0]['id']}: {failed[0]['error']}")
    batch_seconds = finished - ready
    return {"workers": workers, "startup_s": ready - started, "batch_s": batch_seconds,
            "pairs_per_minute": 60.0 * len(records) / batch_seconds,
            "row_s": float(np.mean([record["seconds_total"] for record in records])),
            "task_overhead_ms": overhead * 1000.0}


def per_task_overhead(client) -> float:
    """Seconds per trivial task, submitted and gathered in one go (scheduling, transfer, bookkeeping)."""
    started = time.perf_counter()
    client.gather(client.map(_nothing, range(OVERHEAD_TASKS), pure=False))
    return (time.perf_counter() - started) / OVERHEAD_TASKS


def _nothing(value: int) -> int:
    return value


def pair_transfer_megabytes(data_dir: Path) -> dict:
    """MB moved per 3D dev pair: inputs from the actual file sizes, outputs from the fixed grid.

    Outputs (warped image, warped labels, displacement, Jacobian) are counted uncompressed, an
    upper bound: ``.nii.gz`` shrinks smooth fields and label maps several-fold.
    """
    import nibabel as nib

    pairs = dev_pairs(data_dir, 3)
    inputs = [sum(path.stat().st_size for path in (p.moving, p.fixed, p.moving_labels, p.fixed_labels)) / 1e6
              for p in pairs]
    header = nib.load(str(pairs[0].fixed)).header
    voxels = int(np.prod(header.get_data_shape()[:3]))
    label_bytes = nib.load(str(pairs[0].fixed_labels)).header.get_data_dtype().itemsize
    outputs = voxels * (4 + label_bytes + 3 * 4 + 4) / 1e6  # warped f32, labels, field 3 x f32, det J f32
    return {"input_mb": float(np.mean(inputs)), "output_mb": outputs, "shape": header.get_data_shape()[:3]}


def render_section(method: str, options: dict, rows: int, measured: dict, transfer: dict,
                   projection: Projection, load: float) -> str:
    """The Markdown of the ``batch`` section."""
    counts = sorted(measured)
    option_text = ", ".join(f"{key}={value}" for key, value in options.items()) or "defaults"
    lines = [
        "## Batch registration throughput (`warpseg batch register`, Dask)", "",
        f"Run {datetime.date.today().isoformat()} on {machine_description()}; load average {load:.1f} when it "
        f"started (other work shares these cores). {rows} rows (the 2D dev pairs repeated), method {method} "
        f"({option_text}), one thread per worker process, workers started and warmed up before timing.", "",
        "| worker processes | pairs / minute | register() s / row | cluster start-up (s) | Dask overhead (ms / task) |",
        "|---|---|---|---|---|",
    ]
    for count in counts:
        entry = measured[count]
        lines.append(f"| {count} | {entry['pairs_per_minute']:.1f} | {entry['row_s']:.2f} | "
                     f"{entry['startup_s']:.1f} | {entry['task_overhead_ms']:.1f} |")
    if len(counts) > 1:
        ratio = measured[counts[-1]]["pairs_per_minute"] / measured[counts[0]]["pairs_per_minute"]
        lines += ["", f"Ratio {counts[-1]} : {counts[0]} workers: **{ratio:.2f}x** "
                  f"(ideal {counts[-1] / counts[0]:.0f}x; this machine has {os.cpu_count()} cores)."]
    lines += ["", *render_projection(transfer, projection, measured[counts[-1]]["task_overhead_ms"] / 1000.0)]
    return "\n".join(lines) + "\n"


def render_projection(transfer: dict, projection: Projection, task_overhead_s: float) -> list[str]:
    """The written projection to ``projection.gpus`` GPUs, every assumption named."""
    moved = transfer["input_mb"] + transfer["output_mb"]
    transfer_s = moved / projection.bandwidth_mb_s
    per_gpu = math.ceil(projection.pairs / projection.gpus)
    serial = projection.gpu_seconds_per_pair + transfer_s + task_overhead_s
    overlapped = max(projection.gpu_seconds_per_pair, transfer_s) + task_overhead_s
    aggregate = projection.gpus * moved / overlapped
    shape = " x ".join(str(size) for size in transfer["shape"])
    return [
        f"### Projection: {projection.pairs:,} 3D pairs on {projection.gpus} GPUs (not measured)", "",
        "No GPU was available: this is arithmetic, not a measurement. **Assumed**: "
        f"{projection.gpu_seconds_per_pair:g} s of GPU time per 3D pair (`--gpu-seconds-per-pair`) and "
        f"{projection.bandwidth_mb_s:g} MB/s between storage and each worker (`--bandwidth-mb-s`). **Measured**: "
        f"the data of a 3D dev pair ({shape} voxels): {transfer['input_mb']:.1f} MB in (two images and two "
        f"label maps, .nii.gz as stored) and at most {transfer['output_mb']:.1f} MB out (warped image and "
        f"labels, displacement, Jacobian, uncompressed upper bound), i.e. {transfer_s:.2f} s of transfer per "
        f"pair; Dask's overhead per task from the run above ({task_overhead_s * 1000:.1f} ms).", "",
        f"- {per_gpu} pairs per GPU; per pair {serial:.2f} s if transfer and compute take turns, "
        f"{overlapped:.2f} s if the next pair is fetched while one computes.",
        f"- Wall time: **{per_gpu * serial / 60:.1f} min** (in turns) to **{per_gpu * overlapped / 60:.1f} min** "
        f"(overlapped), plus worker start-up; one GPU alone would take {projection.pairs * overlapped / 3600:.1f} h.",
        f"- Storage must deliver about {aggregate:.0f} MB/s to all {projection.gpus} workers together "
        "(the overlapped rate): above that the cluster is I/O-bound, not GPU-bound.",
        f"- The scheduler's share: {projection.pairs:,} tasks x {task_overhead_s * 1000:.1f} ms = "
        f"{projection.pairs * task_overhead_s:.0f} s, spent while the workers compute: negligible.",
    ]
