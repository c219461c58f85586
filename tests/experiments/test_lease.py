"""When a claim on a sweep counts as live: the rules the driver races in test_drivers.py rest on."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace

from experiments.lease import PREFIX, Claim, Lease
from experiments.tracking import Tracker


def test_a_claim_is_live_while_its_heartbeat_is_young_and_its_process_exists():
    mine = Claim.mine(120.0)
    assert mine.live() and mine.describe().startswith(f"host {mine.host}, pid {mine.pid}, ")
    assert not replace(mine, heartbeat=time.time() - mine.lease_s - 1).live()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert not replace(mine, pid=gone.pid).live()  # this machine, process gone: dead at once
    # Where the pid cannot be checked (another machine or container), only the heartbeat counts.
    assert replace(mine, host="elsewhere", pid=gone.pid).live()
    assert replace(mine, pidns=(mine.pidns or 0) + 1, pid=gone.pid).live()


def test_a_claim_round_trips_and_anything_else_is_ignored():
    mine = Claim.mine(120.0)
    assert Claim.parse(mine.text()) == mine
    assert Claim.parse("not json") is None and Claim.parse('{"host": "x"}') is None


def test_a_lost_driver_removes_its_claim_even_when_a_late_renewal_wrote_it_again(
    tmp_path, monkeypatch
):
    """A driver stopped between reading its claim and renewing it wakes after a taker removed
    the claim: its renewal writes the claim again, then it sees it lost the sweep and stops. At
    its end it removes that claim, which would otherwise stay on the parent for good."""
    monkeypatch.setenv("EXPERIMENTS_LEASE_SECONDS", "9")  # a heartbeat every second
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker.open()
    experiment = tracker.experiment("leases")
    lease = Lease(tracker)
    parent = lease.start(lambda claim: tracker.start_run(experiment, "sweep", tags=claim))
    late = lease.tags()  # the renewal's value, made before the process was stopped
    tracker.delete_tag(parent, lease.key)  # a taker removes the claim
    deadline = time.monotonic() + 30
    while lease.held():  # the heartbeat finds its claim gone
        assert time.monotonic() < deadline, "the heartbeat never noticed"
        time.sleep(0.1)
    tracker.log(parent, tags=late)  # the renewal it was in the middle of lands on waking
    lease.release()
    assert not [k for k in tracker.run(parent).data.tags if k.startswith(PREFIX)]
