"""Errors raised by the data pipeline for bad user input."""


class DataInputError(ValueError):
    """A speed file or value that cannot be used; the message names the file, field or value."""


class DataWarning(UserWarning):
    """Something usable but worth telling the user (gaps, unsorted index, dead sensors)."""
