"""trafficcast: traffic forecasting with DCRNN.

One import name for the four libraries, each a folder at the top of the checkout:
``trafficcast.graph`` (road graphs), ``trafficcast.data`` (readings, windows),
``trafficcast.models`` (DCRNN, baselines, training) and ``trafficcast.app`` (CLI, service, jobs).
An install maps the folders here (pyproject's ``package-dir``); in the checkout, this folder's
links to them make ``trafficcast`` importable from the root for tools that read files (mypy).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("trafficcast")
except PackageNotFoundError:  # the checkout on sys.path without an install
    __version__ = "0+unknown"
