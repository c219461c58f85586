"""When a claim on a sweep counts as live: the rules the driver races in test_drivers.py rest on."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace

from experiments.lease import Claim


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
