"""Which attempt stands for a grid point, in the two places that choose: the sweep's records
(its closing line, exit code and parent counts) and the analysis' reader (every table).
Hand-made rows, in every order they could come in."""

from __future__ import annotations

import random

import pandas as pd
import pytest

from analysis.runs import one_attempt_each
from experiments.records import KEYS, latest_attempts

# A grid point's attempts, oldest first; the last is the one that stands.
HISTORIES = {
    "a": ["KILLED", "FINISHED"],
    "b": ["FAILED", "FINISHED"],
    "c": ["FAILED", "KILLED", "FINISHED"],
    "d": ["FINISHED"],
    "e": ["FAILED", "KILLED"],  # not finished yet: its latest attempt
}


def rows() -> list[dict]:
    out = []
    for key, statuses in HISTORIES.items():
        for attempt, status in enumerate(statuses):
            out.append({"config_key": key, "status": status, "start_time": 100 * attempt,
                        "run_id": f"{key}{attempt}", "impl": "manual",
                        **dict.fromkeys(KEYS, 0)})  # fmt: skip
    return out


# In order, reversed, and shuffled: MLflow's search returns runs in no order the code may rely on.
ORDERS = [list(range(10)), list(range(9, -1, -1))]
ORDERS += [random.Random(seed).sample(range(10), 10) for seed in range(22)]


@pytest.mark.parametrize("order", ORDERS)
def test_the_latest_attempt_stands_in_the_sweeps_records(order):
    frame = pd.DataFrame([rows()[i] for i in order])
    chosen = latest_attempts(frame).set_index("config_key")["run_id"].to_dict()
    assert chosen == {"a": "a1", "b": "b1", "c": "c2", "d": "d0", "e": "e1"}


@pytest.mark.parametrize("order", ORDERS)
def test_the_finished_attempt_stands_in_the_analysis(order):
    frame = pd.DataFrame([rows()[i] for i in order])
    kept, set_aside = one_attempt_each(frame)
    chosen = kept.set_index("config_key")["run_id"].to_dict()
    assert chosen == {"a": "a1", "b": "b1", "c": "c2", "d": "d0", "e": "e1"}
    assert set_aside == 5 and len(kept) == 5
