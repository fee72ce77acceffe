"""The batch retraining job behind ``trafficcast retrain``: champion / challenger on a registry.

One run, holding the registry's lock throughout:

1. Clean what an interrupted writer left (partial version builds, pointer temp files).
2. Resume the interrupted job in ``REGISTRY/staging/`` if there is one with the same options, on
   the data snapshot it started with; otherwise start afresh: merge ``--data`` with the readings
   the service stored (``--observations``; where both have a reading for the same sensor and time,
   the store's wins: it is the newer), and snapshot the result and the graph into staging.
3. Train the challenger with :func:`trafficcast.app.pipeline.train_run` (``resume=True``: the trainer's state
   file, written after every epoch, continues a killed run), optionally warm-started from the
   champion.
4. Publish the challenger as a new immutable version (atomically; see :mod:`trafficcast.app.registry`).
5. Score the champion on the same holdout (the last test-fraction of the same merged data, so
   the most recent readings) and promote the challenger only if its mean MAE over the horizon is
   lower by ``margin`` (a fraction: 0.01 = 1 %), or with ``force``.
6. Prune old versions, write the summary, remove staging.

A job killed anywhere leaves the registry valid: the pointer still names the old champion until
the one atomic rename that promotes the new one.

The modules: :mod:`~trafficcast.app.retrain.options`, :mod:`~trafficcast.app.retrain.merge` (step 2's data),
:mod:`~trafficcast.app.retrain.stages` (steps 2 to 6, each a function), :mod:`~trafficcast.app.retrain.job` (running
them), :mod:`~trafficcast.app.retrain.publish` (a version's files; ``registry import``).
"""

from trafficcast.app.retrain.job import run_retrain, write_summary
from trafficcast.app.retrain.merge import MAX_GAP, merge_observations
from trafficcast.app.retrain.options import (
    EXIT_BAD_INPUT,
    EXIT_BUSY,
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_KEPT,
    EXIT_PROMOTED,
    RetrainOptions,
)
from trafficcast.app.retrain.publish import import_run
from trafficcast.app.retrain.stages import STAGES

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_BUSY",
    "EXIT_CODES",
    "EXIT_FAILED",
    "EXIT_KEPT",
    "EXIT_PROMOTED",
    "MAX_GAP",
    "STAGES",
    "RetrainOptions",
    "import_run",
    "merge_observations",
    "run_retrain",
    "write_summary",
]
