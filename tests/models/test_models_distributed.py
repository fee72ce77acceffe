"""models.distributed without a process group: the sharding rule and the environment."""

from __future__ import annotations

import pytest

from models.distributed import distributed_session, env_world_size, is_main_process, shard_bounds
from models.errors import ConfigError


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
