"""trafficcast models: DCRNN, FC-LSTM, baselines, metrics, the training loop and checkpoints.

Depends on torch (and receives graph supports as tensors); no web stack, no global state.
"""

from trafficcast.models.config import RunConfig
from trafficcast.models.dcrnn import DCRNN
from trafficcast.models.errors import CheckpointError, ConfigError, TrainingError
from trafficcast.models.fc_lstm import FCLSTM

__all__ = ["DCRNN", "FCLSTM", "CheckpointError", "ConfigError", "RunConfig", "TrainingError"]
