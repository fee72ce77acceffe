"""The scheduling examples in deploy/ call the real CLI with flags it accepts."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from trafficcast.app.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# The command the Docker compose file runs (kept identical across the examples).
EXPECTED = (
    "trafficcast retrain --registry /registry --data /data/speeds.h5 "
    "--observations /state/observations.sqlite3"
)


def parse_retrain(command: str):
    """The ``trafficcast retrain ...`` part of a shell line, parsed by the real parser."""
    words = shlex.split(command.split("||")[0].split(">>")[0])
    start = next(i for i, w in enumerate(words) if w.endswith("trafficcast"))
    args = build_parser().parse_args(words[start + 1 :])
    assert args.command == "retrain"
    return args, " ".join(["trafficcast", *words[start + 1 :]])


def check(args, observations: str | None = "/state/observations.sqlite3") -> None:
    assert args.registry == "/registry"
    assert args.data == "/data/speeds.h5"
    assert args.observations == observations


def test_cron_line() -> None:
    lines = [
        line
        for line in (DEPLOY / "cron" / "trafficcast-retrain.cron").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert len(lines) == 1
    fields = lines[0].split(None, 6)
    minute, hour, dom, month, dow, user, command = fields
    assert (minute, hour, dom, month, dow) == ("15", "3", "*", "*", "*") and user == "trafficcast"
    args, text = parse_retrain(command)
    check(args)
    assert text.startswith(EXPECTED)
    assert command.rstrip().endswith("|| [ $? -eq 3 ]")  # "kept" (exit 3) is not a failure


def test_kubernetes_cronjob() -> None:
    doc = yaml.safe_load((DEPLOY / "k8s" / "retrain-cronjob.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("batch/v1", "CronJob")
    spec = doc["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["command"] == ["/bin/sh", "-c"]
    # In Kubernetes the job reads the replicas' PostgreSQL database, its URL from the Secret
    # through the environment: never on the command line, where `ps` shows it.
    args, text = parse_retrain(container["args"][0])
    check(args, observations=None)
    assert args.observations_from_env is True and args.observations_url_file is None
    assert text.startswith(
        EXPECTED.replace("--observations /state/observations.sqlite3", "--observations-from-env")
    )
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claims = {
        v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]
    }
    assert mounts["/registry"] in claims and claims[mounts["/registry"]] == "trafficcast-registry"
    assert {"/registry", "/data"} <= set(mounts)
