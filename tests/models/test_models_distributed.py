"""trafficcast.models.distributed without a process group: the sharding rule and the environment."""

from __future__ import annotations

import pytest

from trafficcast.models.distributed import (
    distributed_session,
    env_world_size,
    is_main_process,
    shard_bounds,
)
from trafficcast.models.errors import ConfigError


@pytest.mark.parametrize("n", [0, 1, 2, 5, 37, 64])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shares_partition_the_batch_and_differ_by_at_most_one(n, world):
    bounds = [shard_bounds(n, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(bounds[r][1] == bounds[r + 1][0] for r in range(world - 1))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # the larger shares first


def test_shares_of_37_on_two_ranks():
    assert [shard_bounds(37, r, 2) for r in range(2)] == [(0, 19), (19, 37)]
    assert [shard_bounds(1, r, 2) for r in range(2)] == [(0, 1), (1, 1)]


def test_a_plain_process_gets_no_session(monkeypatch):
    import torch

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert env_world_size() == 1 and is_main_process()
    with distributed_session(torch.device("cpu")) as ctx:
        assert ctx is None


@pytest.mark.parametrize("value", ["two", "0"])
def test_bad_world_size_is_a_config_error(monkeypatch, value):
    monkeypatch.setenv("WORLD_SIZE", value)
    with pytest.raises(ConfigError, match="WORLD_SIZE"):
        env_world_size()


def test_rank_one_is_not_main(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert not is_main_process()


def test_nan_on_one_rank_is_recovered_by_all_like_one_process(tmp_path):
    """A NaN in rank 1's share only: both ranks see the global loss as NaN, restore the epoch's
    start and halve the rate together, and end where one process ends with the same NaN."""
    import importlib.util
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    worker = Path(__file__).with_name("ddp_nan_worker.py")
    spec = importlib.util.spec_from_file_location("ddp_nan_worker", worker)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # Global step 2 is the 3rd training forward of every rank.
    single = module.train(None, {3})

    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [str(worker), str(tmp_path), "1", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    assert single["recoveries"] == 1
    for r, got in enumerate(ranks):
        assert got["recoveries"] == 1, r
        assert got["global_step"] == single["global_step"]
        assert [h["lr"] for h in got["history"]] == [0.005, 0.005]
        for a, b in zip(single["history"], got["history"], strict=True):
            assert b["train_mae"] == pytest.approx(a["train_mae"], rel=1e-4)
            assert b["val_mae"] == pytest.approx(a["val_mae"], rel=1e-4)
        assert got["weights"] == pytest.approx(single["weights"], abs=1e-4)
    assert ranks[0]["weights"] == ranks[1]["weights"]  # one model, bit for bit
    # Rank 0 speaks for both; its recovery line names the step as one process's does.
    recovered = [line for line in ranks[0]["lines"] if "restored" in line]
    assert len(recovered) == 1 and "non-finite loss at step 2" in recovered[0]
    assert ranks[1]["lines"] == []
