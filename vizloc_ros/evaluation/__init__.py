"""``vizloc-eval``: score the node's localizers on an evaluation bag (see docs/evaluation.md).

* :mod:`.run` - reads the bag (rosbags) and runs every frame through the localizers the node builds
  from the same params file (offline, deterministic), or records a live node (``--live``).
* :mod:`.metrics` - matches estimates to ``/ground_truth/{fix,pose,room}`` by stamp and computes
  the report's numbers (trajectory APE through ``evo``).
* :mod:`.report` - report.json, report.md, PNG plots and the estimates bag (mcap).
* :mod:`.cli` - the console script.
"""
from .metrics import GroundTruth, LocalizerReport, score_localizer
from .run import EvalRun, Estimate, run_offline

__all__ = ['EvalRun', 'Estimate', 'GroundTruth', 'LocalizerReport', 'run_offline', 'score_localizer']
