"""The in-memory speed table every reader returns, and the rule of what counts as missing.

A speed table has one row per timestamp and one column per sensor. The table may hold speed,
flow or occupancy; the name "speed" stays for all three. What counts as missing is a rule of the
data, decided once (:data:`MISSING_RULES`, applied by :func:`observed_readings`) and kept in the
mask: ``"zero"`` (the default, METR-LA's convention) makes a reading of 0, NaN or an empty cell
missing; ``"nan"`` makes only NaN and empty cells missing, so that a flow of 0 at 3 am is a real
reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt
import pandas as pd

from trafficcast.data.calendar import parse_calendar
from trafficcast.data.errors import DataInputError, listing

__all__ = [
    "MISSING_RULES",
    "QUANTITIES",
    "MissingRule",
    "Quantity",
    "SpeedData",
    "check_missing_rule",
    "check_quantity",
    "default_missing_rule",
    "duplicates",
    "observed_readings",
]

# How a reading counts as missing: "zero" (0, NaN or empty) or "nan" (only NaN or empty).
MissingRule = Literal["zero", "nan"]
MISSING_RULES: tuple[MissingRule, ...] = get_args(MissingRule)
# What the readings measure (models/config.py spells the same names for its own layer; a test
# holds the two equal).
Quantity = Literal["speed", "flow", "occupancy"]
QUANTITIES: tuple[Quantity, ...] = get_args(Quantity)


@dataclass
class SpeedData:
    """Speeds of ``N`` sensors at ``T`` regular timestamps, with a mask of observed readings.

    Attributes:
        index: sorted, unique, regular timestamps (naive, nanosecond resolution).
        sensor_ids: sensor ids as strings, in column order.
        values: speeds; missing readings are 0.0.
        mask: True where a reading was observed.
        freq_minutes: the time step in minutes.
        source: the file the data came from, or a label.
        missing: the rule the mask was made with (:data:`MISSING_RULES`); a writer follows it.
        calendar: the days the data covers (:mod:`~trafficcast.data.calendar`: ``all``, or
            ``weekdays`` for a weekdays-only release, whose left-out days are rows of missing
            readings that no window spans).

    Shapes:
        index: (T,); values: (T, N) float32; mask: (T, N) bool.
    """

    index: pd.DatetimeIndex
    sensor_ids: list[str]
    values: np.ndarray
    mask: np.ndarray
    freq_minutes: int
    source: str = "<memory>"
    missing: str = "zero"
    calendar: str = "all"

    def __post_init__(self) -> None:
        check_missing_rule(self.missing)
        self.calendar = parse_calendar(self.calendar).spec
        self.sensor_ids = [str(s) for s in self.sensor_ids]
        self.values = np.asarray(self.values, dtype=np.float32)
        self.mask = np.asarray(self.mask, dtype=bool)
        expected = (len(self.index), len(self.sensor_ids))
        if self.values.shape != expected or self.mask.shape != expected:
            raise ValueError(
                f"SpeedData: values {self.values.shape} and mask {self.mask.shape} must both be "
                f"(timestamps, sensors) = {expected}"
            )

    @property
    def num_steps(self) -> int:
        return int(self.values.shape[0])

    @property
    def num_sensors(self) -> int:
        return int(self.values.shape[1])

    def to_frame(self) -> pd.DataFrame:
        """The speeds as a DataFrame (missing as 0.0), the METR-LA layout.

        Shapes:
            returns (T, N): DatetimeIndex rows, sensor-id columns.
        """
        frame: pd.DataFrame = pd.DataFrame(
            self.values.copy(), index=self.index.copy(), columns=self.sensor_ids
        )
        return frame

    def select_sensors(self, ids: Sequence[str]) -> SpeedData:
        """The same data restricted to ``ids``, in the order given.

        Shapes:
            returns values/mask (T, len(ids)).
        """
        ids = [str(i) for i in ids]
        position = {sid: k for k, sid in enumerate(self.sensor_ids)}
        unknown = [i for i in ids if i not in position]
        if unknown:
            raise DataInputError(
                f"{self.source}: sensor {listing(unknown)} not in the data "
                f"({self.num_sensors} sensors)"
            )
        duplicated = duplicates(ids)
        if duplicated:
            raise DataInputError(f"sensor {listing(duplicated)} selected more than once")
        cols = np.array([position[i] for i in ids], dtype=np.int64)
        return SpeedData(
            index=self.index,
            sensor_ids=ids,
            values=self.values[:, cols],
            mask=self.mask[:, cols],
            freq_minutes=self.freq_minutes,
            source=self.source,
            missing=self.missing,
            calendar=self.calendar,
        )

    def slice_steps(self, start: int | None, stop: int | None) -> SpeedData:
        """Rows ``start:stop`` (Python slice semantics), as a copy.

        Shapes:
            returns values/mask (stop - start, N).
        """
        rows = slice(start, stop)
        return SpeedData(
            index=self.index[rows],
            sensor_ids=list(self.sensor_ids),
            values=self.values[rows].copy(),
            mask=self.mask[rows].copy(),
            freq_minutes=self.freq_minutes,
            source=self.source,
            missing=self.missing,
            calendar=self.calendar,
        )

    def summary(self) -> dict[str, Any]:
        """Plain-Python facts about the data (JSON-serialisable). ``missing_pct`` counts the days
        the calendar covers: a weekdays-only release's weekends are no missing readings."""
        observed = np.asarray(self.mask.any(axis=0), dtype=bool)
        covered = self.mask[parse_calendar(self.calendar).covers(self.index)]
        cells = covered.size
        missing_pct = 100.0 * (1.0 - covered.sum() / cells) if cells else 0.0
        return {
            "steps": self.num_steps,
            "sensors": self.num_sensors,
            "start": self.index[0].isoformat() if self.num_steps else None,
            "end": self.index[-1].isoformat() if self.num_steps else None,
            "freq_minutes": self.freq_minutes,
            "missing_pct": float(missing_pct),
            "always_missing": [
                sid for sid, seen in zip(self.sensor_ids, observed, strict=True) if not seen
            ],
        }


def observed_readings(values: np.ndarray, missing: str) -> npt.NDArray[np.bool_]:
    """Which raw readings are real under the missing-value rule (:data:`MISSING_RULES`): not NaN,
    and not 0 under ``"zero"``. The one place the rule is applied, to a file as it is read and to
    readings as the service receives them; everything downstream goes by the mask it gives.

    Shapes: any -> a bool array of the same shape.
    """
    observed: npt.NDArray[np.bool_] = np.isfinite(values)
    if missing == "zero":
        observed &= values != 0
    return observed


def check_missing_rule(rule: str) -> MissingRule:
    """``rule`` as a :data:`MissingRule`; refused when it is not one of :data:`MISSING_RULES`."""
    for known in MISSING_RULES:
        if rule == known:
            return known
    raise DataInputError(f"missing-value rule {rule!r} is not one of {', '.join(MISSING_RULES)}")


def default_missing_rule(quantity: Quantity) -> MissingRule:
    """The missing-value rule of a quantity when none is given: ``zero`` for speed (a stopped
    detector reports 0; METR-LA's convention), ``nan`` for flow and occupancy (0 is real)."""
    return "zero" if quantity == "speed" else "nan"


def check_quantity(name: str) -> Quantity:
    """``name`` as a :data:`Quantity`; refused when it is not one of :data:`QUANTITIES`."""
    for known in QUANTITIES:
        if name == known:
            return known
    raise DataInputError(f"quantity {name!r} is not one of {', '.join(QUANTITIES)}")


def duplicates(items: Sequence[str]) -> list[str]:
    """The items that appear more than once, each once, in order of their second appearance."""
    seen: set[str] = set()
    dups: list[str] = []
    for item in items:
        if item in seen and item not in dups:
            dups.append(item)
        seen.add(item)
    return dups
