"""trafficcast models: DCRNN, FC-LSTM, baselines, metrics, the training loop and checkpoints.

Depends on torch (and receives graph supports as tensors); no web stack, no global state.
"""

from models.config import RunConfig
from models.dcrnn import DCRNN
from models.errors import CheckpointError, ConfigError, TrainingError
from models.fc_lstm import FCLSTM

__all__ = ["DCRNN", "FCLSTM", "CheckpointError", "ConfigError", "RunConfig", "TrainingError"]
