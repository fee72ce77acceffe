"""The exit status of the ``trafficcast`` command for a user's mistake, in one place.

Bad input (a file, field or value) ends in one line on stderr naming it, and this status; the
retraining job's own statuses (``app/retrain/options.py``) use the same value for it.
"""

EXIT_USER_ERROR = 2
