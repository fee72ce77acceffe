"""Every config key against every kind of bad value, through the real ``trafficcast train``.

The keys, their types and their ranges are read from the config models themselves, so a key
added later is covered without editing this file. For each key: null, ``.inf``, ``.nan``, a
string, a list, a boolean and numbers just outside its range must end in one ``error:`` line
naming ``section.key`` and exit status 2, before any data is read; and the values the key does
allow (its default, null where that is the default, its range's ends, ...) must load.

The CLI loads the config (``trafficcast.app.pipeline.load_config``) before ``train_run`` reads any data, so
each refused case costs only the YAML parse.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import pytest
import yaml
from pydantic.fields import FieldInfo

from trafficcast.app.cli import main
from trafficcast.app.pipeline import load_config
from trafficcast.models.config import RunConfig

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data" / "sample" / "metr-la-week.h5"
ADJACENCY = REPO / "data" / "sample" / "adj_mx.pkl"


# ---- what each key accepts, read from the models ----------------------------------------------
class Spec:
    """A leaf key: its kind (int, float, bool, str, list, literal), null allowed, range."""

    def __init__(self, section: str, key: str, field: FieldInfo) -> None:
        self.section, self.key, self.field = section, key, field
        annotation, metadata = field.annotation, list(field.metadata)
        self.optional = get_origin(annotation) in (Union, types.UnionType)
        if self.optional:
            (annotation,) = [a for a in get_args(annotation) if a is not type(None)]
            if get_origin(annotation) is Annotated:  # StrictInt | None
                annotation, *extra = get_args(annotation)
                metadata += extra
        self.choices: tuple[Any, ...] = ()
        self.item_low = None
        if get_origin(annotation) is Literal:
            self.kind, self.choices = "literal", get_args(annotation)
        elif get_origin(annotation) is list:
            self.kind = "list"
            (item,) = get_args(annotation)
            assert get_args(item)[0] is int, "the table knows lists of integers only"
            self.item_low = _bounds(get_args(item)[1:])[0]
        else:
            self.kind = {int: "int", float: "float", bool: "bool", str: "str"}[annotation]
        self.low, self.high = _bounds(metadata)

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    def default(self) -> Any:
        return self.field.get_default(call_default_factory=True)

    def in_range(self, value: float) -> bool:
        ok = True
        if self.low is not None:
            closed, bound = self.low
            ok &= value >= bound if closed else value > bound
        if self.high is not None:
            closed, bound = self.high
            ok &= value <= bound if closed else value < bound
        return ok

    def bad_values(self) -> list[tuple[str, Any]]:
        cases: list[tuple[str, Any]] = [("inf", math.inf), ("nan", math.nan)]
        if not self.optional:
            cases.append(("null", None))
        if self.kind != "list":
            cases.append(("list", [1]))
        if self.kind != "bool":
            cases.append(("true", True))  # YAML `true` is not 1
        cases += {
            "int": [("string", "64"), ("float", 1.5)],
            "float": [("string", "0.5")],
            "bool": [("string", "yes"), ("int", 1)],
            "str": [("int", 5)],
            "literal": [("string", "not-a-choice"), ("int", 1)],
            "list": [
                ("string", "20"),
                ("list-of-strings", ["20"]),
                ("list-of-floats", [1.5]),
                ("list-of-null", [None]),
            ],
        }[self.kind]
        step = 1 if self.kind == "int" else 0.5
        if self.low is not None:
            closed, bound = self.low
            cases.append(("below-minimum", bound - step if closed else bound))
            if not closed:
                cases.append(("well-below-minimum", bound - 1))
        if self.high is not None:
            closed, bound = self.high
            cases.append(("above-maximum", bound + step if closed else bound))
        if self.item_low is not None:
            closed, bound = self.item_low
            cases.append(("item-below-minimum", [bound - 1 if closed else bound]))
        return cases

    def good_values(self) -> list[tuple[str, Any]]:
        default = self.default()
        cases: list[tuple[str, Any]] = [] if default is None else [("default", default)]
        if self.optional:
            cases.append(("null", None))
        cases += {
            "int": [],
            "float": [],
            "bool": [("true", True), ("false", False)],
            "str": [("string", "some/where")],
            "literal": [(f"choice-{c}", c) for c in self.choices],
            "list": [("empty", []), ("increasing", [1, 2, 5])],
        }[self.kind]
        if self.low is not None:
            closed, bound = self.low
            cases.append(("minimum", bound) if closed else ("just-above-minimum", bound + 1e-3))
        if self.high is not None and self.high[0]:
            cases.append(("maximum", self.high[1]))
        if self.kind == "float":
            # YAML writes `max_grad_norm: 5`; an integer is a number too, held as a float.
            cases += [("integer", n) for n in (0, 1, 2) if self.in_range(n)][:1]
        return cases


def _bounds(metadata) -> tuple[tuple[bool, Any] | None, tuple[bool, Any] | None]:
    """((closed, minimum) or None, (closed, maximum) or None) from annotated-types constraints."""
    low = high = None
    for c in metadata:
        if isinstance(c, annotated_types.Ge):
            low = (True, c.ge)
        elif isinstance(c, annotated_types.Gt):
            low = (False, c.gt)
        elif isinstance(c, annotated_types.Le):
            high = (True, c.le)
        elif isinstance(c, annotated_types.Lt):
            high = (False, c.lt)
    return low, high


SPECS = [
    Spec(section, key, field)
    for section, section_field in RunConfig.model_fields.items()
    for key, field in section_field.annotation.model_fields.items()
]


def _case_id(spec: Spec, label: str) -> str:
    return f"{spec.name}={label}"


BAD = [
    pytest.param(spec, value, id=_case_id(spec, label))
    for spec in SPECS
    for label, value in spec.bad_values()
]
GOOD = [
    pytest.param(spec, value, id=_case_id(spec, label))
    for spec in SPECS
    for label, value in spec.good_values()
]


def _write_config(tmp_path: Path, spec: Spec, value: Any) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({spec.section: {spec.key: value}}))
    return path


def _train_argv(config: Path, output: Path) -> list[str]:
    return ["train", "--data", str(DATA), "--adjacency", str(ADJACENCY),
            "--config", str(config), "--output", str(output)]  # fmt: skip


def _shown(spec: Spec, value: Any) -> str:
    """The value as the error line shows it: as the config would hold it (5 -> 5.0 for floats)."""
    if spec.kind == "float" and type(value) is int:
        value = float(value)
    return repr(value)


# ---- the table -----------------------------------------------------------------------------------
def test_the_table_covers_every_key_of_the_config():
    expected = [(s, k) for s, keys in RunConfig().to_dict().items() for k in keys]
    assert [(spec.section, spec.key) for spec in SPECS] == expected
    assert len(expected) >= 40  # the four sections were found, not an empty tree


def test_every_range_constraint_has_an_out_of_range_case():
    for spec in SPECS:
        labels = {label for label, _ in spec.bad_values()}
        assert ("below-minimum" in labels) == (spec.low is not None), spec.name
        assert ("above-maximum" in labels) == (spec.high is not None), spec.name
    # The ranges that matter were read: a table that found no constraint would test nothing.
    by_name = {spec.name: spec for spec in SPECS}
    assert by_name["model.seq_len"].low == (True, 1)
    assert by_name["model.num_rnn_layers"].high == (True, 8)
    assert by_name["data.train_fraction"].low == (False, 0)
    assert by_name["baselines.fc_lstm_epochs"].low == (True, 1)
    assert by_name["baselines.fc_lstm_epochs"].optional
    assert by_name["train.steps"].item_low == (True, 1)


@pytest.mark.parametrize(("spec", "value"), BAD)
def test_a_bad_value_is_one_error_line_and_exit_2(spec, value, tmp_path, capsys):
    config = _write_config(tmp_path, spec, value)
    output = tmp_path / "run"
    code = main(_train_argv(config, output))
    captured = capsys.readouterr()
    assert code == 2, captured
    assert "Traceback" not in captured.err + captured.out
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"error: {config}: {spec.name} = {_shown(spec, value)} "), lines[0]
    assert not output.exists()  # refused before anything was trained or written


@pytest.mark.parametrize(("spec", "value"), GOOD)
def test_an_allowed_value_is_accepted(spec, value, tmp_path):
    config = load_config(_write_config(tmp_path, spec, value))  # what `train --config` calls
    held = getattr(getattr(config, spec.section), spec.key)
    assert held == value
    if value is None:
        assert held is None
    elif spec.kind == "float":
        assert type(held) is float
    elif spec.kind == "int":
        assert type(held) is int


def test_the_optimizer_name_is_case_insensitive_as_in_dcrnn(tmp_path):
    spec = next(s for s in SPECS if s.name == "train.optimizer")
    assert load_config(_write_config(tmp_path, spec, "Adam")).train.optimizer == "adam"


# ---- a few cases in a real process -----------------------------------------------------------
REAL_PROCESS_CASES = {
    "seq_len-null": ("model:\n  seq_len: null\n", "model.seq_len = None must be an integer >= 1"),
    "fc_lstm_epochs-0": (
        "baselines:\n  fc_lstm_epochs: 0\n",
        "baselines.fc_lstm_epochs = 0 must be an integer >= 1 or null",
    ),
    "base_lr-nan": ("train:\n  base_lr: .nan\n", "train.base_lr = nan must be a finite number > 0"),
    "batch_size-string": (
        "data:\n  batch_size: '64'\n",
        "data.batch_size = '64' must be an integer >= 1",
    ),
}


@pytest.fixture(scope="module")
def real_processes(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """`python -m trafficcast train` once per case, the processes run side by side (each pays for
    importing torch)."""
    started = {}
    for case, (yaml_text, _) in REAL_PROCESS_CASES.items():
        folder = tmp_path_factory.mktemp(case)
        config = folder / "cfg.yaml"
        config.write_text(yaml_text)
        process = subprocess.Popen(
            [sys.executable, "-m", "trafficcast", *_train_argv(config, folder / "run")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        started[case] = (config, process)
    finished = {}
    for case, (config, process) in started.items():
        out, err = process.communicate(timeout=120)
        finished[case] = (
            config,
            subprocess.CompletedProcess(process.args, process.returncode, out, err),
        )
    return finished


@pytest.mark.parametrize("case", list(REAL_PROCESS_CASES))
def test_a_bad_value_in_a_real_process(case, real_processes):
    config, result = real_processes[case]
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.splitlines() == [f"error: {config}: {REAL_PROCESS_CASES[case][1]}"]
