"""The names of the models a run holds and a report scores, written once.

A name keys a model's checkpoint (``model_name``), its ``state_<name>.pt``, its switch under
``baselines:`` in the config, and its rows in ``report.json``.
"""

from __future__ import annotations

__all__ = [
    "DCRNN_NAME",
    "FC_LSTM_NAME",
    "GRU_NAME",
    "HISTORICAL_AVERAGE_NAME",
    "MODEL_ORDER",
    "PERSISTENCE_NAME",
    "REFERENCE_BASELINES",
    "TCN_NAME",
    "TRAINED_BASELINES",
    "TRAINED_MODELS",
]

DCRNN_NAME = "dcrnn"
FC_LSTM_NAME = "fc_lstm"
# DCRNN without the graph: the ablation that shows what the road graph is worth.
GRU_NAME = "gru"
TCN_NAME = "tcn"
PERSISTENCE_NAME = "persistence"
HISTORICAL_AVERAGE_NAME = "historical_average"

# Trained beside DCRNN, in training order; each has a checkpoint and a ``baselines.<name>`` switch.
TRAINED_BASELINES = (FC_LSTM_NAME, GRU_NAME, TCN_NAME)
# Fitted when a run is scored, from the data alone: nothing to train, no checkpoint.
REFERENCE_BASELINES = (PERSISTENCE_NAME, HISTORICAL_AVERAGE_NAME)
# Every model with a checkpoint.
TRAINED_MODELS = (DCRNN_NAME, *TRAINED_BASELINES)
# The order of the models in a report: ours, the references, then the trained baselines.
MODEL_ORDER = (DCRNN_NAME, *REFERENCE_BASELINES, *TRAINED_BASELINES)
