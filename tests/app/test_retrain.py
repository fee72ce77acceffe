"""``trafficcast retrain``: first version, promote a better challenger, keep a worse one, --force,
warm start, merging the service's observations, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import TINY_CONFIG
from trafficcast.app.cli import main
from trafficcast.app.observations import ObservationStore
from trafficcast.app.registry import Registry
from trafficcast.app.retrain import merge_observations
from trafficcast.data import DataInputError, read_speeds
from trafficcast.models.trainer import EpochRecord

NO_FC_LSTM = TINY_CONFIG + "  fc_lstm: false\n"


@pytest.fixture
def retrain_env(tiny_run, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(NO_FC_LSTM)
    return {
        "data": tiny_run["data"],
        "distances": tiny_run["distances"],
        "config": config,
        "registry": tmp_path / "registry",
        "tmp": tmp_path,
    }


def retrain(env, *extra: str, capsys=None) -> tuple[int, dict]:
    summary = env["tmp"] / "summary.json"
    summary.unlink(missing_ok=True)
    argv = ["retrain", "--registry", str(env["registry"]), "--data", str(env["data"])]
    argv += ["--no-progress", "--summary", str(summary), *extra]
    code = main(argv)
    return code, json.loads(summary.read_text())


def test_promote_keep_force_and_warm_start(retrain_env, capsys) -> None:
    env = retrain_env
    registry = Registry(env["registry"])

    # An empty registry: the first challenger is promoted (the graph comes from --distances).
    code, s = retrain(
        env, "--distances", str(env["distances"]), "--config", str(env["config"]), "--epochs", "1"
    )
    assert (code, s["status"], s["current"]) == (0, "promoted", "v0001")
    assert s["reason"] == "the registry had no version yet"
    assert (env["registry"] / "versions" / "v0001" / "graph.npz").is_file()
    assert not registry.staging_dir.exists()  # a finished job leaves no working directory

    # Two epochs beat one on the same holdout: promoted (no graph or config given: the
    # champion's are used).
    code, s = retrain(env, "--epochs", "2")
    assert (code, s["status"], s["current"]) == (0, "promoted", "v0002")
    assert s["challenger"]["holdout_mae"] < s["champion"]["holdout_mae"] * 0.99
    assert s["improvement_pct"] >= 1.0
    assert registry.current().history == ["v0001"]

    # One epoch again: worse than the two-epoch champion, kept (exit 3); the challenger is stored
    # as a version but not made current.
    code, s = retrain(env, "--epochs", "1")
    assert (code, s["status"], s["current"]) == (3, "kept", "v0002")
    assert s["challenger"]["version"] == "v0003"
    assert s["challenger"]["holdout_mae"] > s["champion"]["holdout_mae"]
    assert s["improvement_pct"] < 0
    assert "v0003" in registry.versions() and registry.current().version == "v0002"
    last = json.loads(registry.summary_path.read_text())
    assert last["status"] == "kept" and last["exit_code"] == 3

    # --force promotes a worse challenger; --warm-start starts it from the champion's weights.
    code, s = retrain(env, "--epochs", "1", "--force", "--warm-start", "--keep", "3")
    assert (code, s["status"], s["current"]) == (0, "promoted", "v0004")
    assert "promoted by --force" in s["reason"] or s["improvement_pct"] >= 1.0
    manifest = registry.manifest("v0004")
    assert manifest["warm_start"] is True and manifest["parent"] == "v0002"
    assert s["pruned"] == ["v0001"] and registry.versions() == ["v0002", "v0003", "v0004"]
    out = capsys.readouterr()
    assert "warm start from v0002" in out.err


def test_observations_merge_newer_wins(tiny_run, tmp_path, database) -> None:
    speeds = read_speeds(tiny_run["data"])
    ids = speeds.sensor_ids
    db = database  # a SQLite file's path, then a PostgreSQL URL
    store = ObservationStore(db)
    last = speeds.index[-1]
    # Overlap: the last two steps of two sensors get new values; then one hour beyond the file;
    # and a sensor the file does not have.
    overlap = speeds.index[-2:]
    store.add(ids[:2], overlap, np.array([[11.0, 12.0], [13.0, 14.0]]))
    future = pd.date_range(last + pd.Timedelta(minutes=5), periods=12, freq="5min")
    store.add(ids, future, np.full((12, len(ids)), 42.0))
    store.add(["not-a-sensor"], future[:1], np.array([[50.0]]))
    store.add(ids[2:3], overlap[-1:], np.array([[np.nan]]))  # a NULL never erases a reading
    store.close()

    merged, info = merge_observations(speeds, db)
    assert merged.num_steps == speeds.num_steps + 12
    assert merged.index[-1] == future[-1]
    np.testing.assert_array_equal(merged.values[-14:-12, :2], [[11.0, 12.0], [13.0, 14.0]])
    np.testing.assert_array_equal(merged.values[:-14], speeds.values[:-2])
    assert (
        merged.values[-13, 2] == speeds.values[-1, 2] and merged.mask[-13, 2] == speeds.mask[-1, 2]
    )
    assert np.all(merged.values[-12:] == 42.0) and merged.mask[-12:].all()
    assert info["overridden"] == int(speeds.mask[-2:, :2].sum())
    assert info["new_steps"] == 12 and info["ignored_sensors"] == 1

    other = tmp_path / "other.sqlite3"
    store = ObservationStore(other)
    store.add(["x1", "x2"], future[:1], np.array([[50.0, 51.0]]))
    store.close()
    with pytest.raises(DataInputError, match="none of its 2 sensors"):
        merge_observations(speeds, other)


def test_retrain_with_observations_trains_on_the_merged_data(retrain_env, database) -> None:
    env = retrain_env
    speeds = read_speeds(env["data"])
    db = database  # --observations takes a SQLite file's path or the service's database URL
    store = ObservationStore(db)
    future = pd.date_range(speeds.index[-1] + pd.Timedelta(minutes=5), periods=24, freq="5min")
    store.add(speeds.sensor_ids, future, np.full((24, speeds.num_sensors), 55.0))
    store.close()
    code, s = retrain(
        env,
        "--distances",
        str(env["distances"]),
        "--config",
        str(env["config"]),
        "--epochs",
        "1",
        "--observations",
        str(db),
    )
    assert code == 0
    data = s["job"]["data"]
    assert data["steps"] == speeds.num_steps + 24
    assert data["end"] == str(future[-1])
    assert data["observations"]["readings"] == 24 * speeds.num_sensors


def test_bad_input_is_one_line_and_exit_2(retrain_env, capsys) -> None:
    env = retrain_env
    # No graph anywhere: an empty registry and data that is not METR-LA.
    code, s = retrain(env, "--config", str(env["config"]), "--epochs", "1")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and s["status"] == "failed" and s["exit_code"] == 2
    assert err[-1].startswith("error: ") and "--distances" in err[-1]
    assert "Traceback" not in "\n".join(err)
    code = main(["retrain", "--registry", str(env["registry"]), "--data", "nope.h5"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: ")
    code = main(
        ["retrain", "--registry", str(env["registry"]), "--data", str(env["data"]), "--margin", "2"]
    )
    assert code == 2 and "--margin = 2.0" in capsys.readouterr().err


def test_challenger_progress_hooks(monkeypatch) -> None:
    """The job's decisions on the training come from the trainer's callbacks: the ``training``
    fault point after DCRNN's epoch 2 (not FC-LSTM's, not another epoch), and the epoch a
    resumed DCRNN training went on after."""
    from trafficcast.app.retrain import stages

    fired: list[str] = []
    monkeypatch.setattr(stages, "fault_point", fired.append)
    progress = stages.ChallengerProgress()

    def record(epoch: int) -> EpochRecord:
        return EpochRecord(
            epoch=epoch, train_mae=3.0, val_mae=3.1, lr=0.01, seconds=0.5, global_step=7 * epoch
        )

    progress.on_resumed("fc_lstm", 3, 21)
    assert progress.resumed_epoch is None
    progress.on_resumed("dcrnn", 1, 7)
    progress.on_epoch_end("dcrnn", record(1))
    progress.on_epoch_end("fc_lstm", record(2))
    assert fired == [] and progress.resumed_epoch == 1
    progress.on_epoch_end("dcrnn", record(2))
    assert fired == ["training"]
    progress.on_epoch_end("dcrnn", record(3))
    assert fired == ["training"]


def _live_record(db, registry_version: str, speeds, error: float) -> None:
    """The service's record for ``registry_version`` in ``db``: one forecast from the last hour
    of ``speeds`` that is ``error`` above every reading it is scored against, as the service's
    recorder writes and scores it (the store holds the readings it is scored on)."""
    from trafficcast.app.accuracy import ForecastRecord, ModelMeta, epoch_seconds, score_rows

    horizon = 12
    made_from = speeds.index[-horizon - 1]
    targets = speeds.values[-horizon:].astype(np.float64)  # (12, N), all observed
    store = ObservationStore(db)
    store.add(speeds.sensor_ids, speeds.index[-horizon - 1 :], speeds.values[-horizon - 1 :])
    store.close()
    record = ForecastRecord(db)
    meta = ModelMeta("c0ffee", list(speeds.sensor_ids), horizon=horizon, freq_minutes=5)
    record.register_model(meta, registry_version=registry_version)
    made = record.add(
        meta, epoch_seconds(made_from), "2026-12-01T00:00:00Z", targets + error, None, 0.8
    )
    record.put_scores(score_rows(made, targets))
    record.close()


def test_when_live_mae_above_trains_only_when_the_champion_degraded(retrain_env, capsys) -> None:
    env = retrain_env
    registry = Registry(env["registry"])
    code, _ = retrain(
        env, "--distances", str(env["distances"]), "--config", str(env["config"]), "--epochs", "1"
    )
    assert code == 0 and registry.versions() == ["v0001"]
    db = env["tmp"] / "service.sqlite3"
    _live_record(db, "v0001", read_speeds(env["data"]), error=2.0)

    # The champion forecasts 2.0 off: not above 3, so it is kept and nothing is trained.
    code, s = retrain(env, "--observations", str(db), "--when-live-mae-above", "3")
    assert (code, s["status"], s["current"], s["exit_code"]) == (3, "kept", "v0001", 3)
    assert s["live"]["version"] == "v0001" and s["live"]["mae"] == pytest.approx(2.0)
    assert {h: v["mae"] for h, v in s["live"]["horizons"].items()} == pytest.approx(
        {"15min": 2.0, "30min": 2.0, "60min": 2.0}
    )
    assert "not above 3" in s["reason"] and "challenger" not in s
    assert registry.versions() == ["v0001"] and not registry.staging_dir.exists()
    assert json.loads(registry.summary_path.read_text())["status"] == "kept"
    assert "live accuracy of v0001" in capsys.readouterr().err

    # Above 1: degraded, so the job trains a challenger and reports the live MAE beside the
    # holdout comparison.
    code, s = retrain(env, "--observations", str(db), "--when-live-mae-above", "1", "--epochs", "1")
    assert code in (0, 3) and s["challenger"]["version"] == "v0002"
    assert s["live"]["mae"] == pytest.approx(2.0) and s["champion"]["version"] == "v0001"

    # No record of the champion in the store: no live MAE shows degradation, so no training.
    empty = env["tmp"] / "empty.sqlite3"
    ObservationStore(empty).close()
    code, s = retrain(env, "--observations", str(empty), "--when-live-mae-above", "1")
    assert (code, s["status"], s["live"]) == (3, "kept", None)
    assert "no live MAE" in s["reason"]


def test_when_live_mae_above_needs_the_store(retrain_env, capsys) -> None:
    code = main(
        ["retrain", "--registry", str(retrain_env["registry"]), "--data", str(retrain_env["data"]),
         "--when-live-mae-above", "2"]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: --when-live-mae-above needs --observations")
