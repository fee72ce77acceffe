"""trafficcast data pipeline: speed readers, calendar features, scaling, windows, synthetic data.

Imports numpy, pandas, scipy and torch, never ``models`` or ``app``, and from ``graph`` only
:mod:`trafficcast.graph.io`: its atomic write (every file the pipeline writes goes through it)
and the graph files' readers and writers that the importers use (``write_distances`` and
``save_adjacency`` for the graph an import writes; ``read_distances`` and ``read_sensor_ids``
for the files beside an ASTGCN ``.npz``).
"""

from __future__ import annotations

from trafficcast.data.bundled import (
    SAMPLE_DIR,
    read_sensor_locations,
    sample_adjacency_pkl_path,
    sample_locations_path,
    sample_sensor_ids_path,
    sample_speeds_path,
)
from trafficcast.data.calendar import off_calendar
from trafficcast.data.errors import DataInputError, DataWarning
from trafficcast.data.features import day_of_week, time_features, time_of_day
from trafficcast.data.io import read_speeds, write_speeds
from trafficcast.data.scaler import StandardScaler
from trafficcast.data.speeds import MISSING_RULES, SpeedData
from trafficcast.data.synthetic import SyntheticDataset, make_synthetic, write_synthetic
from trafficcast.data.windows import (
    WindowBatches,
    gather,
    num_windows,
    split_counts,
    split_windows,
    window_starts,
)

__all__ = [
    "MISSING_RULES",
    "SAMPLE_DIR",
    "DataInputError",
    "DataWarning",
    "SpeedData",
    "StandardScaler",
    "SyntheticDataset",
    "WindowBatches",
    "day_of_week",
    "gather",
    "make_synthetic",
    "num_windows",
    "off_calendar",
    "read_sensor_locations",
    "read_speeds",
    "sample_adjacency_pkl_path",
    "sample_locations_path",
    "sample_sensor_ids_path",
    "sample_speeds_path",
    "split_counts",
    "split_windows",
    "time_features",
    "time_of_day",
    "window_starts",
    "write_speeds",
    "write_synthetic",
]
