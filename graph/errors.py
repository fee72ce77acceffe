"""Errors raised by the graph builder for bad user input."""


class GraphInputError(ValueError):
    """A distances, sensor-id or adjacency file that cannot be used; the message names it."""


class GraphWarning(UserWarning):
    """Something usable but worth telling the user (e.g. sensors without any distance)."""
