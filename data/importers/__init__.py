"""Importers for the public traffic-data layouts users download, into the project's formats.

One module per layout: :mod:`~trafficcast.data.importers.pems` (Caltrans PeMS Data Clearinghouse station
5-minute files and station metadata), :mod:`~trafficcast.data.importers.npz` (ASTGCN-style PEMS03/04/07/08
releases), :mod:`~trafficcast.data.importers.largest` (LargeST) and :mod:`~trafficcast.data.importers.libcity` (LibCity
atomic files). Each returns an :class:`ImportResult`; :func:`write_import` writes it.
"""

from __future__ import annotations

from trafficcast.data.importers.common import (
    QUANTITIES,
    ImportResult,
    parse_freq_minutes,
    parse_start,
    write_import,
)
from trafficcast.data.importers.largest import import_largest
from trafficcast.data.importers.libcity import find_atomic_files, import_libcity
from trafficcast.data.importers.npz import import_npz
from trafficcast.data.importers.pems import import_pems

__all__ = [
    "QUANTITIES",
    "ImportResult",
    "find_atomic_files",
    "import_largest",
    "import_libcity",
    "import_npz",
    "import_pems",
    "parse_freq_minutes",
    "parse_start",
    "write_import",
]
