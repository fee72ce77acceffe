"""The run configuration: DCRNN's YAML layout accepted, unknown keys and bad values refused."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import get_args

import pytest
import yaml

from trafficcast.graph import FILTER_TYPES
from trafficcast.models import ConfigError, RunConfig
from trafficcast.models.config import FilterType

REPO = Path(__file__).resolve().parents[2]

# DCRNN's data/model/dcrnn_la.yaml (the METR-LA configuration of the original code), as published.
DCRNN_LA_YAML = """\
---
base_dir: data/model
log_level: INFO
data:
  batch_size: 64
  dataset_dir: data/METR-LA
  test_batch_size: 64
  val_batch_size: 64
  graph_pkl_filename: data/sensor_graph/adj_mx.pkl

model:
  cl_decay_steps: 2000
  filter_type: dual_random_walk
  horizon: 12
  input_dim: 2
  l1_decay: 0
  max_diffusion_step: 2
  num_nodes: 207
  num_rnn_layers: 2
  output_dim: 1
  rnn_units: 64
  seq_len: 12
  use_curriculum_learning: true

train:
  base_lr: 0.01
  dropout: 0
  epoch: 0
  epochs: 100
  epsilon: 1.0e-3
  global_step: 0
  lr_decay_ratio: 0.1
  max_grad_norm: 5
  max_to_keep: 100
  min_learning_rate: 2.0e-06
  optimizer: adam
  patience: 50
  steps: [20, 30, 40, 50]
  test_every_n_epochs: 10
"""


def test_dcrnn_original_yaml_is_accepted(tmp_path):
    path = tmp_path / "dcrnn_la.yaml"
    path.write_text(DCRNN_LA_YAML)
    config = RunConfig.from_yaml(path)
    m, t, d = config.model, config.train, config.data
    assert (m.rnn_units, m.num_rnn_layers, m.max_diffusion_step) == (64, 2, 2)
    assert (m.seq_len, m.horizon, m.num_nodes, m.input_dim) == (12, 12, 207, 2)
    assert m.filter_type == "dual_random_walk" and m.use_curriculum_learning is True
    assert m.cl_decay_steps == 2000
    assert t.steps == [20, 30, 40, 50] and t.epochs == 100 and t.patience == 50
    assert t.base_lr == 0.01 and t.epsilon == 1e-3 and t.min_learning_rate == 2e-6
    assert isinstance(t.max_grad_norm, float) and t.max_grad_norm == 5.0
    assert (d.batch_size, d.val_batch_size, d.test_batch_size) == (64, 64, 64)
    assert d.graph_pkl_filename == "data/sensor_graph/adj_mx.pkl"


def test_resolved_config_round_trips():
    config = RunConfig.from_dict({"model": {"rnn_units": 16, "max_diffusion_step": 0}})
    again = RunConfig.from_dict(config.to_dict())
    assert again == config and again.model.rnn_units == 16 and again.model.max_diffusion_step == 0


def test_empty_config_gives_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert RunConfig.from_yaml(path) == RunConfig()


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"model": {"rnn_unit": 64}}, "'rnn_unit'"),
        ({"train": {"base_lr": 0.01, "learning_rate": 0.1}}, "'learning_rate'"),
        ({"modle": {"rnn_units": 64}}, "'modle'"),
    ],
)
def test_unknown_keys_are_refused_by_name(raw, named):
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(raw, source="cfg.yaml")
    message = str(info.value)
    assert message.startswith("cfg.yaml: ") and "unknown" in message and named in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("model", "filter_type", "foo", "model.filter_type = 'foo'"),
        ("train", "base_lr", -1, "train.base_lr = -1.0 must be a finite number > 0"),
        ("model", "max_diffusion_step", -1, "model.max_diffusion_step = -1"),
        ("model", "num_rnn_layers", 0, "model.num_rnn_layers = 0"),
        ("model", "node_embedding_dim", -1, "model.node_embedding_dim = -1"),
        ("train", "steps", [30, 20], "train.steps = [30, 20]"),
        ("data", "batch_size", 0, "data.batch_size = 0"),
        ("model", "rnn_units", "sixty-four", "model.rnn_units = 'sixty-four' must be an integer"),
        ("model", "use_curriculum_learning", "yes", "must be true or false"),
        ("train", "base_lr", float("nan"), "train.base_lr = nan must be a finite number > 0"),
        ("train", "optimizer", "sgd", "train.optimizer = 'sgd' only adam is supported"),
    ],
)
def test_bad_values_are_refused_naming_the_key(section, key, value, expected):
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({section: {key: value}}, source="cfg.yaml")
    assert expected in str(info.value)


def test_fractions_must_leave_a_validation_split():
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({"data": {"train_fraction": 0.8, "test_fraction": 0.2}}, "cfg.yaml")
    assert str(info.value).startswith(
        "cfg.yaml: data.train_fraction + test_fraction = 1.0 must be less than 1"
    )
    config = RunConfig.from_dict({"data": {"train_fraction": 0.6, "test_fraction": 0.3}})
    assert (config.data.train_fraction, config.data.test_fraction) == (0.6, 0.3)


def test_the_first_error_is_named_and_the_others_counted():
    raw = {"model": {"seq_len": 0, "horizon": 0, "rnn_units": "many"}}
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(raw, source="cfg.yaml")
    assert str(info.value) == "cfg.yaml: model.seq_len = 0 must be an integer >= 1 (and 2 more)"


def test_an_unknown_key_is_reported_before_bad_values():
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({"model": {"seq_len": 0, "rnn_unit": 8}}, source="cfg.yaml")
    message = str(info.value)
    assert message.startswith("cfg.yaml: model: unknown key(s) 'rnn_unit' (known: cl_decay_steps")
    assert message.endswith("(and 1 more)")


def test_assignment_is_validated_and_a_refused_value_is_not_kept():
    config = RunConfig()
    config.train.epochs = 3
    assert config.train.epochs == 3
    with pytest.raises(ConfigError, match=r"^train\.epochs = 0 must be an integer >= 1$"):
        config.train.epochs = 0
    with pytest.raises(ConfigError, match=r"^train\.epochs = True must be an integer"):
        config.train.epochs = True
    assert config.train.epochs == 3
    # A cross-key rule refuses the assignment too, and the old value stays.
    with pytest.raises(ConfigError, match=r"^data\.train_fraction \+ test_fraction = 1\.1 "):
        config.data.train_fraction = 0.9
    assert config.data.train_fraction == 0.7


def _without_later_keys(config: dict) -> dict:
    """``config`` less the keys added after the bundled DCRNN was saved (``data.quantity``,
    ``data.missing``, the GRU's and TCN's ``baselines`` keys)."""
    data = {k: v for k, v in config["data"].items() if k not in ("quantity", "missing")}
    baselines = {k: v for k, v in config["baselines"].items() if not k.startswith(("gru", "tcn"))}
    return {**config, "data": data, "baselines": baselines}


def test_bundled_configs_load_and_save_unchanged():
    from trafficcast.models.checkpoint import load_checkpoint

    bundled = REPO / "app" / "bundled"
    payload = load_checkpoint(bundled / "metr-la-week" / "model.pt")
    config = RunConfig.from_dict(payload["config"], source="checkpoint config")
    # Same keys in the same order: saved config.yaml files and checkpoints do not change, but for
    # the keys added since they were saved, which come back at their defaults, at the end.
    assert (config.data.quantity, config.data.missing, config.data.missing_rule) == (
        "speed",
        None,
        "zero",
    )
    assert _without_later_keys(config.to_dict()) == payload["config"]
    assert [list(v) for v in _without_later_keys(config.to_dict()).values()] == [
        list(v) for v in payload["config"].values()
    ]
    # Rewritten when the GRU and TCN were added to the run: it holds every key.
    saved = bundled / "metr-la-week" / "config.yaml"
    assert RunConfig.from_yaml(saved).to_dict() == yaml.safe_load(saved.read_text())
    assert _without_later_keys(RunConfig.from_yaml(saved).to_dict()) == payload["config"]
    source = RunConfig.from_yaml(bundled / "metr-la-week.yaml")
    assert source == config  # the bundled run was trained from that file
    assert (source.train.epochs, source.train.steps, source.model.cl_decay_steps) == (
        36,
        [26, 32],
        30,
    )


def test_invalid_yaml_is_one_line_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        RunConfig.from_yaml(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_import_models_pulls_in_no_web_stack_nor_data_or_app():
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        import trafficcast.models
        for module in pkgutil.iter_modules(trafficcast.models.__path__):
            importlib.import_module(f"trafficcast.models.{module.name}")
        # the web stack, and the layers above the models library (it may import graph only)
        web = ("fastapi", "starlette", "uvicorn", "pydantic_settings")
        above = ("trafficcast.app", "trafficcast.data")
        print(",".join(sorted(m for m in web + above if m in sys.modules)))
        print("torch" in sys.modules)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    loaded, torch_loaded = result.stdout.splitlines()
    assert loaded == ""
    assert torch_loaded == "True"  # the probe did import the package


def test_filter_types_of_the_config_are_the_graphs():
    # The config spells the Literal out (a type checker reads none from a tuple); the values and
    # their order, which the "one of ..." message lists, must stay those the graph computes.
    assert get_args(FilterType) == FILTER_TYPES
    assert (
        get_args(RunConfig.model_fields["model"].annotation.model_fields["filter_type"].annotation)
        == FILTER_TYPES
    )
