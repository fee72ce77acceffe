"""trafficcast models: DCRNN, FC-LSTM, baselines, metrics, the training loop and checkpoints.

Depends on torch, and on :mod:`trafficcast.graph` only (the supports it receives as tensors,
atomic file writes); never on :mod:`trafficcast.data` or :mod:`trafficcast.app`, so the data
pipeline and the service build on it and not the other way round. No web stack, no global state.
The project's own modules are imported at the top of each module, never inside a function.
"""

from trafficcast.models.config import RunConfig
from trafficcast.models.dcrnn import DCRNN
from trafficcast.models.errors import CheckpointError, ConfigError, TrainingError
from trafficcast.models.fc_lstm import FCLSTM

__all__ = ["DCRNN", "FCLSTM", "CheckpointError", "ConfigError", "RunConfig", "TrainingError"]
