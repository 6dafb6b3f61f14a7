"""One registration sent to a Dask scheduler: same result as locally, progress streams back, cancel."""
from __future__ import annotations

import time

import numpy as np
import pytest

from conftest import blob_pair, rotation_affine
from warpseg.engine import register, run_to_end

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def scheduler():
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def pair():
    moving, moving_labels = blob_pair((48, 52), rotation_affine((1.0, 1.0, 1.0), 6.0, (-24, -26, 0)), 1)
    fixed, fixed_labels = blob_pair((48, 52), rotation_affine((1.0, 1.0, 1.0), 0.0, (-24, -26, 0)), 2)
    return {"moving_labels": moving_labels, "fixed_labels": fixed_labels}, moving, fixed


def test_a_remote_registration_matches_the_local_one_and_streams_progress(scheduler):
    from warpseg.batch.remote import remote_register

    labels, moving, fixed = pair()
    options = {"iterations": (10, 5, 5), "affine_iterations": 20, "threads": 1}
    records = []
    remote = run_to_end(remote_register(scheduler, moving, fixed, "sitk-demons", options=options, **labels),
                        records.append)
    local = run_to_end(register(moving, fixed, "sitk-demons", options=options, **labels))
    stages = [record.stage for record in records]
    assert stages[0] == "remote" and "prepare" in stages and len(set(stages)) >= 3  # the worker's records
    assert np.allclose(remote.displacement, local.displacement, atol=1e-4)
    assert remote.metrics["dice_mean"] == pytest.approx(local.metrics["dice_mean"], abs=1e-6)
    assert np.allclose(remote.warped.affine, fixed.affine)


def test_closing_the_local_job_stops_the_remote_one(scheduler):
    from warpseg.batch.remote import remote_register

    labels, moving, fixed = pair()
    job = remote_register(scheduler, moving, fixed, "nir", options={"iterations": 100_000, "preview_every": 5},
                          **labels)
    while next(job).stage != "optimise":
        pass
    job.close()
    client = distributed.Client(scheduler)
    try:
        deadline = time.monotonic() + 10
        while client.processing() and any(client.processing().values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(client.processing().values()), "the remote task kept running after the cancel"
    finally:
        client.close()


def test_an_unreachable_scheduler_is_a_clear_error():
    from warpseg.batch.remote import remote_register
    from warpseg.errors import WarpsegError

    labels, moving, fixed = pair()
    with pytest.raises(WarpsegError, match="cannot reach the Dask scheduler"):
        next(remote_register("tcp://127.0.0.1:9", moving, fixed, "identity", **labels))
