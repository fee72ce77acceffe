"""The run configuration: one typed tree in DCRNN's YAML layout, with unknown keys refused.

DCRNN's configs (``data:``, ``model:``, ``train:``) are accepted as they are, with the original
key names. The original code read them with ``kwargs.get(key, default)``, so a misspelt key was
silently ignored; here every key must be known, and an unknown one is an error that names it.

Keys of the original layout that do not apply here (``dataset_dir``, ``graph_pkl_filename``,
``base_dir``, ``log_level``, ...) are accepted and ignored: the command line names the data and
the run directory instead. Keys with a value we cannot honour (``optimizer`` other than adam,
``output_dim`` other than 1) are refused with a clear error rather than ignored.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.errors import ConfigError

FILTER_TYPES = ("laplacian", "random_walk", "dual_random_walk")


@dataclass
class DataConfig:
    batch_size: int = 64
    val_batch_size: int = 64
    test_batch_size: int = 64
    add_time_in_day: bool = True
    add_day_in_week: bool = False
    train_fraction: float = 0.7
    test_fraction: float = 0.2
    # Accepted for compatibility with DCRNN's files; the CLI names the data instead.
    dataset_dir: str | None = None
    graph_pkl_filename: str | None = None


@dataclass
class ModelConfig:
    seq_len: int = 12
    horizon: int = 12
    rnn_units: int = 64
    num_rnn_layers: int = 2
    max_diffusion_step: int = 2
    filter_type: str = "dual_random_walk"
    use_curriculum_learning: bool = True
    cl_decay_steps: int = 2000
    # Not in the paper: a learned vector per sensor appended to every input (0 = off, the paper's
    # model). See models.dcrnn.DCRNN.
    node_embedding_dim: int = 0
    output_dim: int = 1
    # Derived from the data; accepted so that DCRNN's files load, checked against the data.
    input_dim: int | None = None
    num_nodes: int | None = None
    l1_decay: float = 0.0


@dataclass
class TrainConfig:
    base_lr: float = 0.01
    epsilon: float = 1.0e-3
    epochs: int = 100
    steps: list[int] = field(default_factory=lambda: [20, 30, 40, 50])
    lr_decay_ratio: float = 0.1
    min_learning_rate: float = 2.0e-6
    max_grad_norm: float = 5.0
    patience: int = 50
    optimizer: str = "adam"
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    # How many times a non-finite loss or gradient may be recovered from before training stops.
    max_recoveries: int = 3
    # Accepted for compatibility with DCRNN's files; not used here.
    dropout: float = 0.0
    epoch: int = 0
    global_step: int = 0
    max_to_keep: int = 100
    test_every_n_epochs: int = 10
    log_dir: str | None = None


@dataclass
class BaselineConfig:
    fc_lstm: bool = True
    fc_lstm_units: int = 256
    fc_lstm_layers: int = 2
    # None: as many epochs as DCRNN.
    fc_lstm_epochs: int | None = None
    fc_lstm_lr: float = 0.001


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None, source: str = "config") -> RunConfig:
        """Build a config from a nested dict, refusing unknown keys and bad values."""
        raw = dict(raw or {})
        for key in _IGNORED_TOP_LEVEL:
            raw.pop(key, None)
        sections = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(sections))
        if unknown:
            raise ConfigError(
                f"{source}: unknown section(s) {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(sections)})"
            )
        built = {}
        for name, f in sections.items():
            section_cls = f.default_factory  # type: ignore[misc]
            built[name] = _build_section(section_cls, raw.get(name), f"{source}: {name}")
        config = cls(**built)
        config.validate(source)
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        import yaml

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

    def validate(self, source: str = "config") -> None:
        m, t, d = self.model, self.train, self.data
        _check(m.seq_len >= 1, source, "model.seq_len", m.seq_len, "must be >= 1")
        _check(m.horizon >= 1, source, "model.horizon", m.horizon, "must be >= 1")
        _check(m.rnn_units >= 1, source, "model.rnn_units", m.rnn_units, "must be >= 1")
        _check(
            1 <= m.num_rnn_layers <= 8,
            source,
            "model.num_rnn_layers",
            m.num_rnn_layers,
            "must be between 1 and 8",
        )
        _check(
            0 <= m.max_diffusion_step <= 10,
            source,
            "model.max_diffusion_step",
            m.max_diffusion_step,
            "must be between 0 and 10",
        )
        _check(
            m.filter_type in FILTER_TYPES,
            source,
            "model.filter_type",
            m.filter_type,
            f"must be one of {', '.join(FILTER_TYPES)}",
        )
        _check(
            m.cl_decay_steps > 0, source, "model.cl_decay_steps", m.cl_decay_steps, "must be > 0"
        )
        _check(
            0 <= m.node_embedding_dim <= 256,
            source,
            "model.node_embedding_dim",
            m.node_embedding_dim,
            "must be between 0 and 256",
        )
        _check(m.output_dim == 1, source, "model.output_dim", m.output_dim, "only 1 is supported")
        _check(m.l1_decay == 0, source, "model.l1_decay", m.l1_decay, "is not supported (use 0)")
        _check(
            t.base_lr > 0 and math.isfinite(t.base_lr),
            source,
            "train.base_lr",
            t.base_lr,
            "must be > 0",
        )
        _check(t.epsilon > 0, source, "train.epsilon", t.epsilon, "must be > 0")
        _check(t.epochs >= 1, source, "train.epochs", t.epochs, "must be >= 1")
        _check(
            all(isinstance(s, int) and s >= 1 for s in t.steps) and t.steps == sorted(t.steps),
            source,
            "train.steps",
            t.steps,
            "must be increasing epoch numbers >= 1",
        )
        _check(
            0 < t.lr_decay_ratio <= 1,
            source,
            "train.lr_decay_ratio",
            t.lr_decay_ratio,
            "must be in (0, 1]",
        )
        _check(t.max_grad_norm > 0, source, "train.max_grad_norm", t.max_grad_norm, "must be > 0")
        _check(t.patience >= 1, source, "train.patience", t.patience, "must be >= 1")
        _check(
            t.optimizer.lower() == "adam",
            source,
            "train.optimizer",
            t.optimizer,
            "only adam is supported",
        )
        _check(t.weight_decay >= 0, source, "train.weight_decay", t.weight_decay, "must be >= 0")
        _check(
            t.threads is None or t.threads >= 1, source, "train.threads", t.threads, "must be >= 1"
        )
        _check(
            t.max_recoveries >= 0, source, "train.max_recoveries", t.max_recoveries, "must be >= 0"
        )
        _check(t.dropout == 0, source, "train.dropout", t.dropout, "is not supported (use 0)")
        for name in ("batch_size", "val_batch_size", "test_batch_size"):
            value = getattr(d, name)
            _check(value >= 1, source, f"data.{name}", value, "must be >= 1")
        _check(
            0 < d.train_fraction < 1
            and 0 < d.test_fraction < 1
            and d.train_fraction + d.test_fraction < 1,
            source,
            "data.train_fraction/test_fraction",
            (d.train_fraction, d.test_fraction),
            "must be in (0, 1) and sum to less than 1",
        )
        b = self.baselines
        _check(
            b.fc_lstm_units >= 1, source, "baselines.fc_lstm_units", b.fc_lstm_units, "must be >= 1"
        )
        _check(
            b.fc_lstm_layers >= 1,
            source,
            "baselines.fc_lstm_layers",
            b.fc_lstm_layers,
            "must be >= 1",
        )
        _check(b.fc_lstm_lr > 0, source, "baselines.fc_lstm_lr", b.fc_lstm_lr, "must be > 0")


_IGNORED_TOP_LEVEL = ("base_dir", "log_level")
_OPTIONAL_INTS = {"input_dim", "num_nodes", "threads", "fc_lstm_epochs"}


def _check(ok: bool, source: str, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"{source}: {key} = {value!r} {why}")


def _build_section(section_cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        return section_cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping of keys to values")
    fields = {f.name: f for f in dataclasses.fields(section_cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(sorted(fields))})"
        )
    values = {}
    defaults = section_cls()
    for key, value in raw.items():
        default = getattr(defaults, key)
        if default is None:  # optional fields: coerce by their declared kind
            default = 0 if key in _OPTIONAL_INTS else ""
        values[key] = _coerce(value, default, f"{where}.{key}")
    return section_cls(**values)


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Check a YAML value against the type of the field's default (None defaults take any)."""
    if value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} = {value!r} must be true or false")
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise ConfigError(f"{where} = {value!r} must be an integer")
        return int(value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} = {value!r} must be a number")
        if not math.isfinite(float(value)):
            raise ConfigError(f"{where} = {value!r} must be finite")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where} = {value!r} must be a string")
        return value
    if isinstance(default, list):
        if not isinstance(value, list):
            raise ConfigError(f"{where} = {value!r} must be a list")
        out = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, (int, float)) or item != int(item):
                raise ConfigError(f"{where} = {value!r} must be a list of integers")
            out.append(int(item))
        return out
    return value
