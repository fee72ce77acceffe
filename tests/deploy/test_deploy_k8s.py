"""The Kubernetes manifests in deploy/k8s, checked offline.

Every manifest is validated against the Kubernetes API's own schemas (kubernetes-validate ships
them; strict mode, so an unknown or misspelt field fails), and the properties the replicated
deployment rests on are asserted: replicas, probes, the non-root read-only pods, the shared
registry claim, the Secret's keys, and selectors that pick the API pods and nothing else.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from trafficcast.app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"

# The oldest Kubernetes release still commonly run, and the newest the package has schemas for.
K8S_VERSIONS = ["1.31", ".".join(kubernetes_validate.latest_version().split(".")[:2])]

API_LABELS = {"app.kubernetes.io/name": "trafficcast", "app.kubernetes.io/component": "api"}


# --- helpers ----------------------------------------------------------------------------------


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def manifests() -> list[tuple[str, dict]]:
    """Every object the kustomization lists, with the file it comes from."""
    out = []
    for name in kustomization()["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc:
                out.append((name, doc))
    return out


def one(kind: str) -> dict:
    (doc,) = [d for _, d in manifests() if d["kind"] == kind]
    return doc


def pod_specs() -> dict[str, dict]:
    """The pod template of each workload, by kind."""
    return {
        "Deployment": one("Deployment")["spec"]["template"],
        "Job": one("Job")["spec"]["template"],
        "CronJob": one("CronJob")["spec"]["jobTemplate"]["spec"]["template"],
    }


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def image_uid() -> int:
    (user,) = [
        i["value"]
        for i in DockerfileParser(str(ROOT / "Dockerfile")).structure
        if i["instruction"] == "USER"
    ]
    return int(user.split(":")[0])


def api_container() -> dict:
    (container,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def retrain_container() -> dict:
    (container,) = pod_specs()["CronJob"]["spec"]["containers"]
    return container


# --- schema -----------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    spec = kustomization()
    assert spec["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert spec["kind"] == "Kustomization"
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(spec["resources"]) == sorted(files)
    kinds = sorted(d["kind"] for _, d in manifests())
    assert kinds == sorted(
        [
            "CronJob",
            "Deployment",
            "Job",
            "PersistentVolumeClaim",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
            "Secret",
            "Service",
        ]
    )
    # The image transformer names the image the workloads run, so `kustomize edit set image`
    # reaches every one of them.
    (image,) = spec["images"]
    for pod in pod_specs().values():
        assert [c["image"].split(":")[0] for c in pod["spec"]["containers"]] == [image["name"]]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schema(version: str) -> None:
    for name, doc in manifests():
        # A kind without a schema raises SchemaNotFoundError: nothing passes unchecked.
        validated = kubernetes_validate.validate(doc, version, strict=True)
        assert validated == version, (name, validated)


def test_the_validation_rejects_a_misspelt_field_and_a_wrong_type() -> None:
    """The schema check above can fail: broken copies of the Deployment are refused."""
    deployment = one("Deployment")
    version = K8S_VERSIONS[-1]
    kubernetes_validate.validate(deployment, version, strict=True)

    typo = copy.deepcopy(deployment)
    (container,) = typo["spec"]["template"]["spec"]["containers"]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(typo, version, strict=True)

    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError, match="'two'"):
        kubernetes_validate.validate(wrong_type, version, strict=True)


def test_kustomize_builds_what_validates() -> None:
    """`kubectl kustomize` (what `kubectl apply -k` applies) renders valid objects."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the manifests themselves are validated above")
    done = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    built = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert sorted(d["kind"] for d in built) == sorted(d["kind"] for _, d in manifests())
    for doc in built:
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


# --- the service ------------------------------------------------------------------------------


def test_deployment_runs_replicas_with_probes_on_the_service_port() -> None:
    deployment = one("Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    assert spec["selector"]["matchLabels"] == API_LABELS
    assert spec["template"]["metadata"]["labels"] == API_LABELS
    # A rolling update never takes a serving pod away before its replacement is ready.
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    container = api_container()
    assert container["command"] == ["trafficcast", "serve"]
    (port,) = container["ports"]
    assert (port["name"], port["containerPort"]) == ("http", Settings.model_fields["port"].default)

    def probe(name: str) -> dict:
        get = container[name]["httpGet"]
        assert get["port"] == "http", name
        return container[name]

    assert probe("readinessProbe")["httpGet"]["path"] == "/readyz"
    assert probe("livenessProbe")["httpGet"]["path"] == "/healthz"
    startup = probe("startupProbe")
    assert startup["httpGet"]["path"] == "/healthz"
    # Generous: migrations (perhaps waiting for another replica's lock) and the model load get
    # minutes before liveness could restart the pod.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 180

    resources = container["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert set(resources["limits"]) == {"cpu", "memory"}


def test_pods_run_as_the_image_user_on_a_read_only_root() -> None:
    uid = image_uid()
    assert uid == 10001
    for kind, template in pod_specs().items():
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, kind
        assert pod["securityContext"]["runAsUser"] == uid, kind
        assert pod["automountServiceAccountToken"] is False, kind
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, kind
            assert context["allowPrivilegeEscalation"] is False, kind
            assert context["capabilities"] == {"drop": ["ALL"]}, kind
            # A read-only root needs a writable /tmp, and only an emptyDir is scratch space.
            (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert "emptyDir" in volumes[tmp["name"]], kind


def test_registry_claim_is_read_write_many_and_shared_by_api_and_retrain() -> None:
    (claim,) = [
        d
        for _, d in manifests()
        if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == "trafficcast-registry"
    ]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for kind in ("Deployment", "CronJob"):
        pod = pod_specs()[kind]["spec"]
        (container,) = pod["containers"]
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/registry"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["persistentVolumeClaim"]["claimName"] == "trafficcast-registry", kind
        assert env_of(container)["TRAFFICCAST_REGISTRY"]["value"] == "/registry", kind
    # Every claim a pod mounts is one the kustomization creates.
    claims = {d["metadata"]["name"] for _, d in manifests() if d["kind"] == "PersistentVolumeClaim"}
    mounted = {
        v["persistentVolumeClaim"]["claimName"]
        for template in pod_specs().values()
        for v in template["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert mounted == claims == {"trafficcast-registry", "trafficcast-data"}


def test_secret_keys_feed_the_deployment_the_job_and_the_cronjob() -> None:
    secret = one("Secret")
    name = secret["metadata"]["name"]
    keys = set(secret["stringData"])
    assert keys == {"database-url", "api-keys"}
    # Placeholders, marked as such: nothing real is committed.
    assert all("CHANGE-ME" in value for value in secret["stringData"].values())
    assert secret["stringData"]["database-url"].startswith("postgresql://")

    def from_secret(container: dict) -> dict[str, str]:
        refs = {}
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == name and ref["key"] in keys, env
                refs[env["name"]] = ref["key"]
        return refs

    assert from_secret(api_container()) == {
        "TRAFFICCAST_DATABASE_URL": "database-url",
        "TRAFFICCAST_API_KEYS": "api-keys",
    }
    for kind in ("Job", "CronJob"):
        (container,) = pod_specs()[kind]["spec"]["containers"]
        assert from_secret(container) == {"TRAFFICCAST_DATABASE_URL": "database-url"}, kind
    for template in pod_specs().values():
        for container in template["spec"]["containers"]:
            names = {
                n.removeprefix("TRAFFICCAST_").lower()
                for n in env_of(container)
                if n.startswith("TRAFFICCAST_")
            }
            assert names <= set(Settings.model_fields), names


def test_migration_job_and_cronjob_run_the_database_commands() -> None:
    (migrate,) = pod_specs()["Job"]["spec"]["containers"]
    assert migrate["command"] == ["trafficcast", "db", "upgrade"]
    assert one("Job")["spec"]["ttlSecondsAfterFinished"] > 0
    done = subprocess.run(
        [sys.executable, "-m", "trafficcast", *migrate["command"][1:], "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0 and "TRAFFICCAST_DATABASE_URL" in done.stdout, done.stderr

    container = retrain_container()
    assert container["command"] == ["/bin/sh", "-c"]
    (script,) = container["args"]
    # The job reads the URL itself: the password never reaches its command line (`ps`).
    assert "--observations-from-env" in script
    assert "TRAFFICCAST_DATABASE_URL" not in script and "postgresql://" not in script
    assert "--observations " not in script
    assert "/state" not in script and "sqlite" not in script
    # "Kept" (exit 3) is a normal outcome of a nightly run; every other failure fails the Job.
    assert script.endswith("|| [ $? -eq 3 ]")
    assert all(m["mountPath"] != "/state" for m in container["volumeMounts"])

    done = subprocess.run(
        [sys.executable, "-c", "from trafficcast.app.cli import main; raise SystemExit(main())", "retrain"]
        + ["--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    for flag in (w for w in script.split() if w.startswith("--")):
        assert flag in done.stdout, flag


def test_service_and_pdb_select_the_api_pods_only() -> None:
    api_pods = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    other_pods = [pod_specs()[k]["metadata"]["labels"] for k in ("Job", "CronJob")]

    def selects(selector: dict, labels: dict) -> bool:
        return selector.items() <= labels.items()

    service = one("Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert selects(service["spec"]["selector"], api_pods)
    assert not any(selects(service["spec"]["selector"], labels) for labels in other_pods)
    (port,) = service["spec"]["ports"]
    assert port["port"] == 80
    (container_port,) = [p for p in api_container()["ports"] if p["name"] == port["targetPort"]]
    assert container_port["containerPort"] == 8000

    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1 < one("Deployment")["spec"]["replicas"]
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selects(selector, api_pods)
    assert not any(selects(selector, labels) for labels in other_pods)
