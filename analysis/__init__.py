"""Read training histories back and say whether two implementations agree."""

from analysis.agreement import TOLERANCES, TrajectoryGap, trajectory_gap

__all__ = ["TOLERANCES", "TrajectoryGap", "trajectory_gap"]
