"""The run configuration: one typed tree in DCRNN's YAML layout, with unknown keys refused.

DCRNN's configs (``data:``, ``model:``, ``train:``) are accepted as they are, with the original
key names. The original code read them with ``kwargs.get(key, default)``, so a misspelt key was
silently ignored; here every key must be known, and an unknown one is an error that names it.

Keys of the original layout that do not apply here (``dataset_dir``, ``graph_pkl_filename``,
``base_dir``, ``log_level``, ...) are accepted and ignored: the command line names the data and
the run directory instead. Keys with a value we cannot honour (``optimizer`` other than adam,
``output_dim`` other than 1) are refused with a clear error rather than ignored.

Every section is a pydantic model whose fields hold the defaults and the allowed values, so each
key's rule lives in one place. Types are strict because YAML is loose: ``true`` is not the
integer 1, ``"64"`` is not a number, ``1.5`` is not an integer, and ``.inf``/``.nan`` are
refused everywhere. A bad value from a file (``from_yaml``), a dict (``from_dict``) or an
assignment such as ``config.train.epochs = n`` ends in a :class:`~trafficcast.models.errors.ConfigError`
with one line ``SOURCE: section.key = VALUE why``. (The constructors, ``RunConfig(**values)``,
raise pydantic's ``ValidationError``: they are for code, and user input goes through
``from_dict``.)
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, cast, get_args, get_origin

import annotated_types
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from trafficcast.models.errors import ConfigError

# Strict: an int is accepted (YAML's `max_grad_norm: 5`) and stored as a float, a bool or a
# string is not.
StrictFiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]


def _lower(value: Any) -> Any:
    # DCRNN lower-cases the optimizer's name, so `optimizer: Adam` works in its files.
    return value.lower() if isinstance(value, str) else value


class _Section(BaseModel):
    """A config model: unknown keys refused, assignments validated (a bad one: ConfigError)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def __setattr__(self, name: str, value: Any) -> None:
        before = self.__dict__.get(name)
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            # pydantic has already stored the value when a model validator refuses it.
            if name in self.__dict__:
                self.__dict__[name] = before
            where = _section_path(type(self))
            raise ConfigError(_describe(exc, {name: value}, where, None)) from None


# The unit each quantity is reported in (METR-LA and PEMS-BAY speeds are in mph; PeMS flow is
# a count of vehicles per time step; PeMS occupancy the fraction of time a detector is covered).
QUANTITY_UNITS = {"speed": "mph", "flow": "vehicles per step", "occupancy": "fraction"}


class DataConfig(_Section):
    """``data:``: batch sizes, the time features appended to the reading, the chronological
    split, what is forecast and what counts as missing."""

    batch_size: StrictInt = Field(default=64, ge=1)
    val_batch_size: StrictInt = Field(default=64, ge=1)
    test_batch_size: StrictInt = Field(default=64, ge=1)
    add_time_in_day: StrictBool = True
    add_day_in_week: StrictBool = False
    # Chronological: train first, test last, validation the rest in between.
    train_fraction: StrictFiniteFloat = Field(default=0.7, gt=0, lt=1)
    test_fraction: StrictFiniteFloat = Field(default=0.2, gt=0, lt=1)
    # Accepted for compatibility with DCRNN's files; the CLI names the data instead.
    dataset_dir: StrictStr | None = None
    graph_pkl_filename: StrictStr | None = None
    # What the readings are; reported with its unit (QUANTITY_UNITS) by the service.
    quantity: Literal["speed", "flow", "occupancy"] = "speed"
    # What counts as a missing reading: "zero" (0, NaN or empty, METR-LA's convention) or "nan"
    # (only NaN or empty: a 0 is real). None: from the quantity, "zero" for speed (a stopped
    # sensor reads 0) and "nan" for flow and occupancy (0 vehicles at 3 am is a reading).
    missing: Literal["zero", "nan"] | None = None

    @property
    def missing_rule(self) -> str:
        """``missing`` with its default filled in from ``quantity``."""
        if self.missing is not None:
            return self.missing
        return "zero" if self.quantity == "speed" else "nan"

    @property
    def unit(self) -> str:
        return QUANTITY_UNITS[self.quantity]

    @model_validator(mode="after")
    def _leave_a_validation_split(self) -> DataConfig:
        total = self.train_fraction + self.test_fraction
        if total >= 1:
            raise _RuleError(
                "train_fraction + test_fraction",
                total,
                "must be less than 1 (the validation split is what is left)",
            )
        return self


# graph's FILTER_TYPES, spelt out: a type checker reads no tuple into a Literal (a test checks
# that the two agree, order included, which the error messages follow).
FilterType = Literal["laplacian", "random_walk", "dual_random_walk"]


class ModelConfig(_Section):
    """``model:``: DCRNN's shape (windows, units, layers, diffusion) and curriculum learning."""

    seq_len: StrictInt = Field(default=12, ge=1)
    horizon: StrictInt = Field(default=12, ge=1)
    rnn_units: StrictInt = Field(default=64, ge=1)
    num_rnn_layers: StrictInt = Field(default=2, ge=1, le=8)
    max_diffusion_step: StrictInt = Field(default=2, ge=0, le=10)
    filter_type: FilterType = "dual_random_walk"
    use_curriculum_learning: StrictBool = True
    cl_decay_steps: StrictInt = Field(default=2000, ge=1)
    # Not in the paper: a learned vector per sensor appended to every input (0 = off, the paper's
    # model). See trafficcast.models.dcrnn.DCRNN.
    node_embedding_dim: StrictInt = Field(default=0, ge=0, le=256)
    # Only one output (speed) is supported; the key is accepted so that DCRNN's files load.
    output_dim: StrictInt = Field(default=1, ge=1, le=1)
    # Derived from the data; accepted so that DCRNN's files load, checked against the data.
    input_dim: StrictInt | None = Field(default=None, ge=1)
    num_nodes: StrictInt | None = Field(default=None, ge=1)
    # DCRNN's key for a regulariser this code does not have: only 0 (off) is accepted.
    l1_decay: StrictFiniteFloat = Field(default=0.0, ge=0, le=0)


class TrainConfig(_Section):
    """``train:``: the optimiser, its learning-rate schedule, stopping, seed, device, threads."""

    base_lr: StrictFiniteFloat = Field(default=0.01, gt=0)
    # Adam's epsilon.
    epsilon: StrictFiniteFloat = Field(default=1.0e-3, gt=0)
    epochs: StrictInt = Field(default=100, ge=1)
    # Epochs after which the learning rate is multiplied by lr_decay_ratio (MultiStepLR).
    steps: list[Annotated[StrictInt, annotated_types.Ge(1)]] = Field(
        default_factory=lambda: [20, 30, 40, 50]
    )
    lr_decay_ratio: StrictFiniteFloat = Field(default=0.1, gt=0, le=1)
    min_learning_rate: StrictFiniteFloat = Field(default=2.0e-6, ge=0)
    max_grad_norm: StrictFiniteFloat = Field(default=5.0, gt=0)
    # Epochs without a better validation MAE before training stops.
    patience: StrictInt = Field(default=50, ge=1)
    optimizer: Annotated[Literal["adam"], BeforeValidator(_lower)] = "adam"
    weight_decay: StrictFiniteFloat = Field(default=0.0, ge=0)
    # torch.Generator's range.
    seed: StrictInt = Field(default=0, ge=0, le=2**64 - 1)
    device: StrictStr = "cpu"
    # None: torch's default.
    threads: StrictInt | None = Field(default=None, ge=1)
    # How many times a non-finite loss or gradient may be recovered from before training stops.
    max_recoveries: StrictInt = Field(default=3, ge=0)
    # Accepted for compatibility with DCRNN's files; not used here (dropout: only 0, off).
    dropout: StrictFiniteFloat = Field(default=0.0, ge=0, le=0)
    epoch: StrictInt = Field(default=0, ge=0)
    global_step: StrictInt = Field(default=0, ge=0)
    max_to_keep: StrictInt = Field(default=100, ge=0)
    test_every_n_epochs: StrictInt = Field(default=10, ge=1)
    log_dir: StrictStr | None = None

    @field_validator("steps")
    @classmethod
    def _steps_in_order(cls, steps: list[int]) -> list[int]:
        if steps != sorted(steps):
            raise ValueError("must be epoch numbers in increasing order")
        return steps


class BaselineConfig(_Section):
    """``baselines:``: the models trained beside DCRNN for the report: the FC-LSTM, the GRU
    (DCRNN without the graph) and the TCN (dilated causal convolutions per sensor)."""

    fc_lstm: StrictBool = True
    fc_lstm_units: StrictInt = Field(default=256, ge=1)
    fc_lstm_layers: StrictInt = Field(default=2, ge=1)
    # None: as many epochs as DCRNN.
    fc_lstm_epochs: StrictInt | None = Field(default=None, ge=1)
    fc_lstm_lr: StrictFiniteFloat = Field(default=0.001, gt=0)
    gru: StrictBool = True
    # None: as DCRNN's rnn_units / num_rnn_layers, so that the graph is all that differs.
    gru_units: StrictInt | None = Field(default=None, ge=1)
    gru_layers: StrictInt | None = Field(default=None, ge=1)
    # None: as many epochs as DCRNN; fewer compress DCRNN's learning-rate steps to fit.
    gru_epochs: StrictInt | None = Field(default=None, ge=1)
    tcn: StrictBool = True
    tcn_channels: StrictInt = Field(default=32, ge=1)
    # The receptive field, tcn_kernel_size ** tcn_layers, must cover model.seq_len.
    tcn_layers: StrictInt = Field(default=4, ge=1)
    tcn_kernel_size: StrictInt = Field(default=2, ge=2)
    # None: as many epochs as DCRNN.
    tcn_epochs: StrictInt | None = Field(default=None, ge=1)
    tcn_lr: StrictFiniteFloat = Field(default=0.01, gt=0)


# Top-level keys of DCRNN's files that name its own directories and logging.
_IGNORED_TOP_LEVEL = ("base_dir", "log_level")


class RunConfig(_Section):
    """A run's whole configuration, in DCRNN's YAML layout; saved beside each run."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    baselines: BaselineConfig = Field(default_factory=BaselineConfig)

    @model_validator(mode="before")
    @classmethod
    def _dcrnn_layout(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        # An empty section in YAML (`data:` with nothing under it) reads as null.
        return {
            key: {} if key in cls.model_fields and value is None else value
            for key, value in raw.items()
            if key not in _IGNORED_TOP_LEVEL
        }

    def to_dict(self) -> dict[str, Any]:
        """The nested plain dict, sections and keys in declaration order (saved as config.yaml)."""
        return self.model_dump()

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None, source: str = "config") -> RunConfig:
        """Build a config from a nested dict, refusing unknown keys and bad values."""
        raw = {} if raw is None else raw
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, raw, (), source)) from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        try:
            text = path.read_text()
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not a text file") from exc
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
            raise ConfigError(f"{path}: invalid YAML ({first})") from exc
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping with data/model/train")
        return cls.from_dict(raw, source=str(path))


class _RuleError(ValueError):
    """A rule over several keys of one section; ``key`` names them for the message."""

    def __init__(self, key: str, value: Any, why: str) -> None:
        super().__init__(why)
        self.key, self.value, self.why = key, value, why


def _section_path(cls: type[BaseModel]) -> tuple[str, ...]:
    """Where a model sits in the tree: ``("train",)`` for TrainConfig, ``()`` for the root."""
    for name, field in RunConfig.model_fields.items():
        if field.annotation is cls:
            return (name,)
    return ()


def _describe(exc: ValidationError, raw: Any, path: tuple[str, ...], source: str | None) -> str:
    """One line for the first of pydantic's errors: ``SOURCE: section.key = VALUE why``.

    ``raw`` is the input of the model at ``path`` in the tree. Unknown keys are reported first,
    all of a section's together: a misspelt key is the likelier mistake, and it may be the
    cause of the other errors.
    """
    errors = exc.errors()
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        # an unknown key's location is section names only (no list index), strings all
        where = tuple(str(part) for part in unknown[0]["loc"][:-1])
        names = [e["loc"][-1] for e in unknown if tuple(e["loc"][:-1]) == where]
        full = path + where
        fields = _model_at(full).model_fields
        if full:
            line = (
                f"{'.'.join(full)}: unknown key(s) {', '.join(map(repr, names))} "
                f"(known: {', '.join(sorted(fields))})"
            )
        else:
            line = f"unknown section(s) {', '.join(map(repr, names))} (known: {', '.join(fields)})"
        rest = len(errors) - len(names)
    else:
        line = _describe_one(errors[0], raw, path)
        rest = len(errors) - 1
    if source:
        line = f"{source}: {line}"
    return f"{line} (and {rest} more)" if rest else line


def _describe_one(error: Any, raw: Any, path: tuple[str, ...]) -> str:
    loc = tuple(error["loc"])
    # A field's path ends before any list index: an item of train.steps reports the whole list.
    ints = [i for i, part in enumerate(loc) if isinstance(part, int)]
    field_loc = loc[: ints[0]] if ints else loc
    full = path + field_loc
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, _RuleError):
        return f"{'.'.join(full)}.{cause.key} = {cause.value!r} {cause.why}"
    if not full:
        return "the top level must be a mapping with data/model/train"
    value = _lookup(raw, field_loc, error["input"])
    field = _model_at(full[:-1]).model_fields[full[-1]]
    if field.annotation is float and type(value) is int:
        value = float(value)  # as the config would hold it, e.g. `base_lr: -1` is -1.0
    if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
        why = "must be a mapping of keys to values"
    elif isinstance(cause, ValueError):
        why = str(cause)
    else:
        why = _requirement(field)
    return f"{'.'.join(full)} = {value!r} {why}"


def _model_at(path: tuple[str, ...]) -> type[BaseModel]:
    model: Any = RunConfig
    for name in path:
        model = model.model_fields[name].annotation
    return cast("type[BaseModel]", model)  # a section's path leads to a section


def _lookup(raw: Any, loc: tuple[Any, ...], default: Any) -> Any:
    for name in loc:
        if not isinstance(raw, dict) or name not in raw:
            return default
        raw = raw[name]
    return raw


# Keyed by a field's annotation (typed as any object by pydantic).
_NOUNS: dict[object, str] = {
    bool: "true or false",
    int: "an integer",
    float: "a finite number",
    str: "a string",
}
_PLURALS: dict[object, str] = {
    bool: "booleans",
    int: "integers",
    float: "finite numbers",
    str: "strings",
}


def _requirement(field: FieldInfo) -> str:
    """What a field accepts, in words, from its type and constraints.

    ``must be an integer between 1 and 8``, ``must be a finite number in (0, 1]``,
    ``must be an integer >= 1 or null``, ``only adam is supported``.
    """
    annotation, metadata = field.annotation, list(field.metadata)
    optional = get_origin(annotation) in (Union, types.UnionType)
    if optional:
        # pydantic keeps the constraints of `StrictInt | None` in the field's metadata.
        (annotation,) = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is Annotated:
        annotation, *extra = get_args(annotation)
        metadata += extra
    if get_origin(annotation) is Literal:
        values = [str(v) for v in get_args(annotation)]
        if len(values) == 1:
            return f"only {values[0]} is supported"
        text = "one of " + ", ".join(values)
    else:
        low, high = _bounds(metadata)
        if low is not None and low == high:
            return f"only {low[1]} is supported"
        if get_origin(annotation) is list:
            (item,) = get_args(annotation)
            item_type, *item_metadata = get_args(item) or (item,)
            text = f"a list of {_PLURALS[item_type]}{_range_text(*_bounds(item_metadata))}"
        else:
            text = _NOUNS[annotation] + _range_text(low, high)
    return f"must be {text} or null" if optional else f"must be {text}"


Bound = tuple[bool, str]  # (closed, the number as written)


def _bounds(metadata: list[Any]) -> tuple[Bound | None, Bound | None]:
    low = high = None
    for c in metadata:
        if isinstance(c, annotated_types.Ge):
            low = (True, _number(c.ge))
        elif isinstance(c, annotated_types.Gt):
            low = (False, _number(c.gt))
        elif isinstance(c, annotated_types.Le):
            high = (True, _number(c.le))
        elif isinstance(c, annotated_types.Lt):
            high = (False, _number(c.lt))
    return low, high


def _range_text(low: Bound | None, high: Bound | None) -> str:
    """`` >= 1``, `` between 1 and 8``, `` in (0, 1]``, or nothing."""
    if low and high:
        if low[0] and high[0]:
            return f" between {low[1]} and {high[1]}"
        return f" in {'[' if low[0] else '('}{low[1]}, {high[1]}{']' if high[0] else ')'}"
    if low:
        return f" {'>=' if low[0] else '>'} {low[1]}"
    if high:
        return f" {'<=' if high[0] else '<'} {high[1]}"
    return ""


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
