"""The graph-free baselines in a run: the GRU is DCRNN without the graph, the TCN refuses a
window it cannot see, and the report's first sentence reads the graph's worth off the numbers."""

from __future__ import annotations

import pytest
import torch

from trafficcast.app.pipeline import build_dcrnn, build_gru, build_tcn, report_markdown
from trafficcast.app.pipeline.baselines import gru_settings
from trafficcast.app.pipeline.report import graph_verdict
from trafficcast.models.checkpoint import build_model
from trafficcast.models.config import RunConfig
from trafficcast.models.errors import ConfigError


def _config(**sections) -> RunConfig:
    return RunConfig.from_dict(sections)


def test_gru_is_dcrnn_without_the_graph():
    config = _config(model={"rnn_units": 8, "num_rnn_layers": 2, "node_embedding_dim": 3})
    gru, kwargs = build_gru(config, num_nodes=5, input_dim=2)
    assert kwargs["max_diffusion_step"] == 0 and gru.num_supports == 0
    assert (kwargs["hidden_dim"], kwargs["num_layers"], kwargs["node_embedding_dim"]) == (8, 2, 3)
    # The same model DCRNN's builder makes at K = 0, weight for weight.
    at_k0 = _config(
        model={"rnn_units": 8, "num_rnn_layers": 2, "node_embedding_dim": 3,
               "max_diffusion_step": 0}
    )  # fmt: skip
    dcrnn, dcrnn_kwargs = build_dcrnn(at_k0, num_nodes=5, input_dim=2, supports=[])
    assert dcrnn_kwargs == kwargs
    dcrnn.load_state_dict(gru.state_dict())
    x = torch.randn(2, 12, 5, 2, generator=torch.Generator().manual_seed(0))
    gru.eval(), dcrnn.eval()
    with torch.no_grad():
        torch.testing.assert_close(gru(x), dcrnn(x), rtol=0, atol=0)
    payload = {"model_name": "gru", "model_kwargs": kwargs, "state_dict": gru.state_dict()}
    with torch.no_grad():
        torch.testing.assert_close(build_model(payload)(x), gru(x), rtol=0, atol=0)


def test_gru_sizes_of_its_own():
    config = _config(model={"rnn_units": 8}, baselines={"gru_units": 4, "gru_layers": 1})
    _, kwargs = build_gru(config, num_nodes=5, input_dim=2)
    assert (kwargs["hidden_dim"], kwargs["num_layers"]) == (4, 1)


def test_fewer_gru_epochs_compress_the_learning_rate_steps():
    config = _config(train={"epochs": 36, "steps": [26, 32]}, baselines={"gru_epochs": 18})
    settings = gru_settings(config)
    assert (settings.epochs, settings.steps) == (18, [13, 16])
    assert gru_settings(_config(train={"epochs": 36, "steps": [26, 32]})).steps == [26, 32]


def test_a_tcn_that_cannot_see_the_window_is_refused():
    config = _config(model={"seq_len": 12}, baselines={"tcn_layers": 3, "tcn_kernel_size": 2})
    with pytest.raises(ConfigError, match="sees 8 steps, fewer than model.seq_len = 12"):
        build_tcn(config, num_nodes=3, input_dim=2)
    _, kwargs = build_tcn(_config(model={"seq_len": 8}, baselines={"tcn_layers": 3}), 3, 2)
    assert kwargs["num_layers"] == 3


def _report(dcrnn: tuple, gru: tuple | None) -> dict:
    def row(maes):
        return {k: {"mae": v, "rmse": None, "mape_pct": None}
                for k, v in zip(("15min", "30min", "60min"), maes, strict=True)}  # fmt: skip

    metrics = {"dcrnn": row(dcrnn), **({"gru": row(gru)} if gru else {})}
    return {
        "dataset": {"sensors": 3, "steps": 100, "freq_minutes": 5},
        "split": {"train": 70, "val": 10, "test": 20},
        "metrics": metrics,
        "training_s": {"dcrnn": 120.4, "gru": 30.0},
    }


def test_the_graph_helped_at_every_horizon():
    sentence = graph_verdict(_report((2.0, 3.0, 4.0), (2.5, 3.5, 5.0)))
    assert sentence == (
        "The road graph helped: DCRNN's MAE is 20.0 % / 14.3 % / 20.0 % lower than the "
        "graph-free GRU's at 15 / 30 / 60 minutes."
    )


def test_the_graph_lost():
    sentence = graph_verdict(_report((2.2, 3.3, 4.4), (2.0, 3.0, 4.0)))
    assert sentence == (
        "The road graph did not help: DCRNN's MAE is 10.0 % / 10.0 % / 10.0 % higher than the "
        "graph-free GRU's at 15 / 30 / 60 minutes."
    )


def test_the_graph_helped_at_some_horizons():
    sentence = graph_verdict(_report((1.9, 3.0, 4.4), (2.0, 3.0, 4.0)))
    assert sentence == (
        "The road graph helped at 15 minutes only: DCRNN's MAE is 5.0 % lower / 0.0 % higher / "
        "10.0 % higher than the graph-free GRU's at 15 / 30 / 60 minutes."
    )


def test_no_sentence_without_the_gru_or_a_common_horizon():
    assert graph_verdict(_report((2.0, 3.0, 4.0), None)) is None
    assert graph_verdict(_report((2.0, None, None), (None, 3.0, 4.0))) is None
    partial = graph_verdict(_report((2.0, 3.0, None), (2.5, 3.5, None)))
    assert partial is not None and partial.endswith(
        "lower than the graph-free GRU's at 15 / 30 minutes."
    )


def test_report_md_opens_with_the_sentence_and_shows_training_time():
    md = report_markdown(_report((2.2, 3.3, 4.4), (2.0, 3.0, 4.0))).splitlines()
    assert md[0] == "# trafficcast evaluation"
    assert md[2].startswith("The road graph did not help: DCRNN's MAE is 10.0 %")
    header = next(line for line in md if line.startswith("| model |"))
    assert header.endswith("| training s |")
    assert next(line for line in md if line.startswith("| dcrnn |")).endswith("| 120 |")
    assert next(line for line in md if line.startswith("| gru |")).endswith("| 30 |")
    without = report_markdown(_report((2.0, 3.0, 4.0), None)).splitlines()
    assert without[2].startswith("Test split:")


SYNTH_CONFIG = """\
model:
  rnn_units: 16
  num_rnn_layers: 1
  cl_decay_steps: 30
train:
  epochs: 8
  steps: [6]
  threads: 1
baselines:
  fc_lstm_units: 64
  fc_lstm_layers: 1
"""


@pytest.mark.slow
def test_on_the_synthetic_corridor_the_graph_helps(tmp_path, capsys):
    """Congestion travels along the synthetic roads: DCRNN, which sees the neighbours, beats the
    graph-free GRU at every horizon, and the report's first sentence says so with the margins."""
    import json

    from trafficcast.app.cli import main

    data, run = tmp_path / "syn", tmp_path / "run"
    assert main(["synth", "--sensors", "30", "--days", "7", "--output-dir", str(data)]) == 0
    (tmp_path / "syn.yaml").write_text(SYNTH_CONFIG)
    argv = ["train", "--data", str(data / "speeds.h5"), "--distances", str(data / "distances.csv"),
            "--config", str(tmp_path / "syn.yaml"), "--no-progress", "--output", str(run)]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    report = json.loads((run / "report.json").read_text())
    m = report["metrics"]
    gains = [100 * (m["gru"][h]["mae"] - m["dcrnn"][h]["mae"]) / m["gru"][h]["mae"]
             for h in ("15min", "30min", "60min")]  # fmt: skip
    assert all(g > 3 for g in gains), gains
    first = (run / "report.md").read_text().splitlines()[2]
    assert first == (
        "The road graph helped: DCRNN's MAE is "
        + " / ".join(f"{g:.1f} %" for g in gains)
        + " lower than the graph-free GRU's at 15 / 30 / 60 minutes."
    )
