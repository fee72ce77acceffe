"""Errors raised by models, training and checkpoints for bad user input."""


class ConfigError(ValueError):
    """A configuration key or value that is unknown or out of range; the message names it."""


class CheckpointError(ValueError):
    """A file that is not a trafficcast checkpoint, or one that was altered."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss keeps diverging after the learning rate was lowered)."""
