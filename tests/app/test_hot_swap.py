"""Hot swap on a real uvicorn server: a promoted version replaces the serving model while a stream
of concurrent forecasts runs, and none fails; a broken promoted version is refused and the old
model keeps serving."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import torch

from tests.app.conftest import registry_server
from trafficcast.app.cli import main
from trafficcast.app.pipeline import TrainOptions, train_run
from trafficcast.app.registry import Registry
from trafficcast.data import read_speeds
from trafficcast.models.checkpoint import load_checkpoint, save_checkpoint
from trafficcast.models.config import RunConfig


def forecast_body(data_path) -> dict:
    speeds = read_speeds(data_path)
    rows = slice(speeds.num_steps - 12, speeds.num_steps)
    return {
        "timestamps": [t.isoformat() for t in speeds.index[rows]],
        "sensors": speeds.sensor_ids,
        "speeds": speeds.values[rows].astype(float).tolist(),
    }


def wait_for(url: str, check, timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = httpx.get(f"{url}/v1/model", timeout=5).json()
        if check(info):
            return info
        time.sleep(0.1)
    raise AssertionError(f"not reached in {timeout_s} s; /v1/model says {info}")


def test_hot_swap_under_concurrent_requests(tiny_run, tmp_path) -> None:
    root = tmp_path / "registry"
    registry = Registry(root)
    imp = ["registry", "import", "--registry", str(root), "--distances", str(tiny_run["distances"])]
    assert main([*imp, str(tiny_run["run"])]) == 0  # v0001, current

    # v0002: another model of the same sensors (another seed).
    run2 = tmp_path / "run2"
    config = RunConfig.from_dict(
        {
            "model": {"rnn_units": 8, "num_rnn_layers": 1},
            "train": {"epochs": 1, "seed": 7, "threads": 1},
            "baselines": {"fc_lstm": False},
        }
    )
    train_run(
        TrainOptions(
            tiny_run["data"],
            run2,
            distances=tiny_run["distances"],
            config=config,
            progress=False,
            log=lambda m: None,
        )
    )
    assert main([*imp, str(run2)]) == 0
    # v0003: a model whose weights are NaN: complete and intact on disk, but its smoke forecast
    # fails, so the service must refuse it.
    run3 = tmp_path / "run3"
    shutil.copytree(run2, run3)
    payload = load_checkpoint(run3 / "model.pt")
    payload["state_dict"] = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() and "support" not in k else v
        for k, v in payload["state_dict"].items()
    }
    save_checkpoint(run3 / "model.pt", payload)
    assert main([*imp, str(run3)]) == 0
    assert registry.versions() == ["v0001", "v0002", "v0003"]
    assert registry.current().version == "v0001"

    server = registry_server(root, tmp_path)
    body = forecast_body(tiny_run["data"])
    results: list[tuple[int, str]] = []
    errors: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while not stop.is_set():
                try:
                    r = http.post("/v1/forecast", json=body)
                    version = r.json().get("model_version", "") if r.status_code == 200 else ""
                    ok = r.status_code == 200 and np.isfinite(r.json()["forecast"]).all()
                    with lock:
                        results.append((r.status_code if ok else -r.status_code, version))
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(repr(exc))

    def wait_count(n: int, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(results) + len(errors) < n:
            assert time.monotonic() < deadline, f"only {len(results)} answers in {timeout_s} s"
            time.sleep(0.05)

    try:
        server.wait_ready()
        first = httpx.get(f"{server.url}/v1/model").json()
        assert first["registry"]["version"] == "v0001" and first["last_swap_error"] is None
        with ThreadPoolExecutor(8) as pool:
            for _ in range(8):
                pool.submit(client)
            wait_count(20)  # the stream runs before, during and after each promotion
            assert main(["registry", "promote", "--registry", str(root), "v0002"]) == 0
            second = wait_for(server.url, lambda m: m["registry"]["version"] == "v0002")
            wait_count(len(results) + 20)
            assert main(["registry", "promote", "--registry", str(root), "v0003"]) == 0
            after = wait_for(server.url, lambda m: m["last_swap_error"] is not None)
            wait_count(len(results) + 20)
            stop.set()
        # Counted: every request of the stream answered 200 with a finite forecast.
        statuses = Counter(code for code, _ in results)
        print(f"hot swap: {len(results)} requests, statuses {dict(statuses)}, errors {len(errors)}")
        assert errors == []
        assert statuses == {200: len(results)} and len(results) >= 60
        served = Counter(v for _, v in results)
        assert set(served) == {first["version"], second["version"]}, served
        assert min(served.values()) >= 20  # both models answered part of the stream
        assert first["version"] != second["version"]
        # The broken v0003 was refused; v0002 still serves, and /v1/model says why.
        assert after["version"] == second["version"]
        assert after["registry"]["version"] == "v0002"
        assert after["last_swap_error"]["version"] == "v0003"
        assert "not finite" in after["last_swap_error"]["error"]
        assert registry.current().version == "v0003"
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'trafficcast_model_swaps_total{result="ok"} 1.0' in metrics
        assert 'trafficcast_model_swaps_total{result="failed"} 1.0' in metrics

        # A rollback to v0002 is a no-op for the service; promoting v0001 again swaps back.
        assert main(["registry", "promote", "--registry", str(root), "v0001"]) == 0
        back = wait_for(server.url, lambda m: m["registry"]["version"] == "v0001")
        assert back["version"] == first["version"]
    finally:
        server.stop()
    log = (tmp_path / "server.log").read_text()
    assert "swap to registry version v0003 failed; still serving v0002" in log


def test_empty_registry_serves_the_run_dir_model_until_a_version_is_promoted(
    service_settings, tiny_run, tmp_path
) -> None:
    # A fresh deployment: the registry volume is empty. The service is ready at once with
    # run_dir's model, and the first promoted version replaces it; without the fallback it waits.
    from fastapi.testclient import TestClient

    from trafficcast.app.service import create_app

    root = tmp_path / "registry"
    root.mkdir()
    waiting = service_settings.model_copy(update={"registry": root, "registry_fallback": False})
    with TestClient(create_app(waiting)) as client:
        assert client.get("/readyz").status_code == 503
    settings = service_settings.model_copy(update={"registry": root, "registry_poll_s": 0.1})
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        first = client.get("/v1/model").json()
        assert first["registry"] is None or first["registry"].get("version") is None
        imp = ["registry", "import", "--registry", str(root), "--distances"]
        assert main([*imp, str(tiny_run["distances"]), str(tiny_run["run"])]) == 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            info = client.get("/v1/model").json()
            if (info.get("registry") or {}).get("version") == "v0001":
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"the promoted version was not swapped in: {info}")
