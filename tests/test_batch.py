"""`warpseg batch register`: one Dask task per row, idempotent, failures recorded, workers may die."""
import csv
import os
import signal

import numpy as np
import pytest

from conftest import blob_pair
from warpseg.cli import main
from warpseg.errors import InputError
from warpseg.io import write_volume

pytest.importorskip("distributed")

from warpseg.batch import BatchJob, read_pairs, run_batch  # noqa: E402

AFFINE = BatchJob("sitk-affine", {"threads": 1, "iterations": 30}, device="cpu")


def write_pairs(folder, count: int, shape=(40, 36), extra_lines=()) -> "os.PathLike":
    """``count`` blob pairs as NIfTI under ``folder/data`` and a pairs CSV with relative paths."""
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    lines = ["moving,fixed,moving_labels,fixed_labels,id"]
    for index in range(count):
        moving, moving_labels = blob_pair(shape, np.eye(4), 10 + index)
        fixed, fixed_labels = blob_pair(shape, np.eye(4), 20 + index)
        for name, volume in (("m", moving), ("ml", moving_labels), ("f", fixed), ("fl", fixed_labels)):
            write_volume(volume, data / f"{name}{index}.nii.gz")
        files = [f"data/{name}{index}.nii.gz" for name in ("m", "f", "ml", "fl")]
        lines.append(",".join([*files, f"pair{index}"]))
    path = folder / "pairs.csv"
    path.write_text("\n".join([*lines, *extra_lines]) + "\n")
    return path


def read_summary(out):
    with (out / "summary.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def result_files(out):
    return sorted(path.relative_to(out).as_posix() for path in out.rglob("result.json"))


def test_pairs_csv_paths_are_relative_to_it_and_ids_default_to_file_names(tmp_path):
    (tmp_path / "pairs.csv").write_text("fixed,moving\nimages/b.nii.gz,images/a.nii.gz\n/abs/c.nii,images/a.nii.gz\n")
    rows = read_pairs(tmp_path / "pairs.csv")
    assert rows[0].moving == str(tmp_path / "images" / "a.nii.gz") and rows[1].fixed == "/abs/c.nii"
    assert [row.id for row in rows] == ["a_to_b", "a_to_c"] and rows[0].moving_labels is None


@pytest.mark.parametrize("text,message", [
    ("moving,target\na.nii,b.nii\n", "missing"),
    ("moving,fixed\na.nii,b.nii\nc/a.nii,b.nii\n", "more than one row"),
    ("moving,fixed,id\na.nii,b.nii,..\n", "cannot name"),
    ("moving,fixed\n", "no rows listed"),
])
def test_bad_pairs_files_are_refused_with_what_to_do(tmp_path, text, message):
    (tmp_path / "pairs.csv").write_text(text)
    with pytest.raises(InputError, match=message):
        read_pairs(tmp_path / "pairs.csv")


def test_a_failing_row_is_recorded_and_a_rerun_skips_finished_rows(tmp_path, capsys):
    pairs = write_pairs(tmp_path, 2, extra_lines=["data/missing.nii.gz,data/f0.nii.gz,,,broken"])
    out = tmp_path / "out"
    argv = ["batch", "register", "--pairs", str(pairs), "--method", "sitk-affine", "--option", "threads=1",
            "--option", "iterations=30", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 1  # some rows failed
    summary = {row["id"]: row for row in read_summary(out)}
    assert [row["id"] for row in read_summary(out)] == ["pair0", "pair1", "broken"]
    assert summary["broken"]["status"] == "failed" and summary["broken"]["error"].startswith("InputError:")
    assert "missing.nii.gz" in summary["broken"]["error"] and not (out / "broken").exists()
    for row_id in ("pair0", "pair1"):
        assert summary[row_id]["status"] == "ok" and 0 <= float(summary[row_id]["dice_mean"]) <= 1
        assert summary[row_id]["worker"] and float(summary[row_id]["seconds_total"]) > 0
    assert "[batch] 3/3" in capsys.readouterr().err
    written = {path: path.stat().st_mtime_ns for path in out.rglob("result.json")}

    assert main(argv) == 1
    again = {row["id"]: row for row in read_summary(out)}
    assert again["pair0"]["status"] == again["pair1"]["status"] == "skipped"
    assert again["pair0"]["dice_mean"] == summary["pair0"]["dice_mean"]  # read back from result.json
    assert again["broken"]["status"] == "failed"  # failures are retried, and fail again
    assert {path: path.stat().st_mtime_ns for path in out.rglob("result.json")} == written


def test_a_bad_method_or_pairs_file_gives_one_line_and_starts_nothing(tmp_path, capsys):
    pairs = write_pairs(tmp_path, 1)
    for argv in (["--pairs", str(pairs), "--method", "no-such-method"],
                 ["--pairs", str(tmp_path / "nope.csv"), "--method", "identity"]):
        status = main(["batch", "register", *argv, "--out", str(tmp_path / "out")])
        error = capsys.readouterr().err.strip()
        assert status == 2 and error.startswith("warpseg: error:") and "\n" not in error
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_worker_killed_mid_batch_loses_and_repeats_no_pair(tmp_path):
    from distributed import Client, LocalCluster

    rows = read_pairs(write_pairs(tmp_path, 6, shape=(64, 60)))
    slow = BatchJob("sitk-affine", {"threads": 1, "iterations": 300, "samples": 20000}, device="cpu")  # ~1 s a row:
    out, killed = tmp_path / "out", []  # the kill lands mid-row, not as a row completes
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        def kill_a_busy_worker(record, done, total):
            """Once the first row is in, SIGKILL a worker that is running a row."""
            busy = {address: keys for address, keys in client.processing().items() if keys}
            if killed or not busy:
                return
            address, keys = next(iter(busy.items()))
            pid = client.run(os.getpid, workers=[address])[address]
            os.kill(pid, signal.SIGKILL)
            running = [row.id for row in rows if any(f"-{row.id}-" in key for key in keys)]
            killed.append({"pid": pid, "done": done, "rows": running})

        records = run_batch(rows, slow, out, client=client, on_row=kill_a_busy_worker)
    assert killed and killed[0]["done"] < len(rows), "no worker was busy to be killed: the test proved nothing"
    interrupted = {record["id"]: record["worker"] for record in records if record["id"] in killed[0]["rows"]}
    assert interrupted and all(not worker.endswith(f":{killed[0]['pid']}") for worker in interrupted.values()), (
        killed, records)
    assert [record["id"] for record in records] == [row.id for row in rows]
    assert all(record["status"] == "ok" for record in records), records
    assert result_files(out) == [f"pair{index}/result.json" for index in range(6)]
    assert [row["id"] for row in read_summary(out)] == [row.id for row in rows]

    rerun = run_batch(rows, slow, out)  # every row done: no cluster needed, nothing registered again
    assert {record["status"] for record in rerun} == {"skipped"}


def test_a_scheduler_address_runs_the_batch_on_that_cluster(tmp_path):
    from distributed import LocalCluster

    pairs, out = write_pairs(tmp_path, 2), tmp_path / "out"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        status = main(["batch", "register", "--pairs", str(pairs), "--method", "identity", "--device", "cpu",
                       "--out", str(out), "--scheduler", cluster.scheduler_address, "--quiet"])
        assert status == 0 and "warpseg-register" in cluster.scheduler.task_prefixes  # its tasks ran there
    assert [row["status"] for row in read_summary(out)] == ["ok", "ok"]


def test_the_projection_states_its_assumptions_and_does_the_arithmetic(tmp_path):
    from warpseg.bench.batch import Projection, render_section
    from warpseg.bench.report import replace_section

    measured = {count: {"pairs_per_minute": 30.0 * count ** 0.5, "row_s": 1.0, "startup_s": 2.0,
                        "task_overhead_ms": 0.0} for count in (1, 2)}
    transfer = {"input_mb": 6.0, "output_mb": 144.0, "shape": (160, 192, 224)}
    body = render_section("sitk-affine", {"threads": 1}, 12, measured, transfer,
                          Projection(pairs=10_000, gpus=100, gpu_seconds_per_pair=2.0, bandwidth_mb_s=100.0), 1.0)
    replace_section(tmp_path / "BENCHMARKS.md", "batch", body)
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "<!-- bench:batch -->" in text and "**1.41x**" in text
    assert "not measured" in text and "Assumed" in text and "1.50 s of transfer" in text
    assert "**5.8 min** (in turns) to **3.3 min** (overlapped)" in text  # 100 x (2 + 1.5) s and 100 x 2 s


def test_batch_segment_scores_each_image_and_records_failures(tmp_path, capsys):
    """`batch segment`: atlas propagation per row, Dice against the row's reference labels, a row
    with a missing atlas recorded as failed, finished rows skipped on a rerun."""
    write_pairs(tmp_path, 2)  # data/m<i> (atlas), data/f<i> (image) with their labels
    images = tmp_path / "images.csv"
    images.write_text("image,atlas,atlas_labels,labels,id\n"
                      "data/f0.nii.gz,data/m0.nii.gz,data/ml0.nii.gz,data/fl0.nii.gz,\n"
                      "data/f1.nii.gz,data/m1.nii.gz,data/ml1.nii.gz,data/fl1.nii.gz,second\n"
                      "data/f1.nii.gz,data/gone.nii.gz,data/ml1.nii.gz,,broken\n")
    out = tmp_path / "out"
    argv = ["batch", "segment", "--images", str(images), "--method", "atlas-propagation",
            "--option", "registration=identity", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 1
    summary = {row["id"]: row for row in read_summary(out)}
    assert list(summary) == ["f0", "second", "broken"]
    assert summary["broken"]["status"] == "failed" and "gone.nii.gz" in summary["broken"]["error"]
    for row_id in ("f0", "second"):
        assert summary[row_id]["status"] == "ok" and 0 < float(summary[row_id]["dice_mean"]) <= 1
        assert (out / row_id / "segmentation.nii.gz").is_file() and float(summary[row_id]["seconds_total"]) > 0
    assert not (out / "broken").exists() and "[batch] 3/3" in capsys.readouterr().err
    assert main(argv) == 1
    assert {row["id"]: row["status"] for row in read_summary(out)} == {"f0": "skipped", "second": "skipped",
                                                                       "broken": "failed"}


def test_images_csv_needs_both_atlas_columns(tmp_path):
    from warpseg.batch import read_images

    (tmp_path / "images.csv").write_text("image,atlas\na.nii.gz,b.nii.gz\n")
    with pytest.raises(InputError, match="both atlas and atlas_labels"):
        read_images(tmp_path / "images.csv")
    (tmp_path / "images.csv").write_text("moving\na.nii.gz\n")
    with pytest.raises(InputError, match="header must be image"):
        read_images(tmp_path / "images.csv")
