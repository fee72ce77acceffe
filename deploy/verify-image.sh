#!/usr/bin/env bash
# Builds the real Dockerfile with podman, runs the image and checks it as an operator would:
# /readyz, a forecast for the bundled METR-LA week checked against what really happened, the
# healthcheck, a non-root process, a read-only root filesystem. Prints the image size and the
# time from `podman run` to ready.
#
# For machines without a Docker engine or access to public registries (as root):
#   apt-get install -y --no-install-recommends podman buildah runc debootstrap
#   deploy/verify-image.sh
# The base image is made locally with debootstrap (Debian bookworm + python3 3.11) when absent;
# torch comes from a local wheel directory, the other packages from the package index pip
# reaches from here (through the host's CA bundle).
#
# Environment (all optional):
#   IMAGE         tag to build                     (localhost/trafficcast:verify)
#   BASE_IMAGE    base to build on                 (localhost/debian-py:bookworm, made if absent)
#   TORCH_WHEELS  directory holding the torch wheel (/opt/wheels); empty: PyTorch's CPU index
#   CA_BUNDLE     CA bundle for pip in the build   (/etc/ssl/certs/ca-certificates.crt)
#   WORK          scratch directory                (/var/tmp/trafficcast-verify)
#   SKIP_BUILD=1  check an image built before
#   NO_CACHE=1    build every layer afresh (for timing the whole build)
#   MAX_READY_S   how long the container may take to become ready (180)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/trafficcast:verify}
BASE_IMAGE=${BASE_IMAGE:-localhost/debian-py:bookworm}
TORCH_WHEELS=${TORCH_WHEELS-/opt/wheels}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
WORK=${WORK:-/var/tmp/trafficcast-verify}
MAX_READY_S=${MAX_READY_S:-180}
# Without a cgroup-delegating init (this machine), podman needs runc, explicit limits and the
# host's network; the build runs with chroot isolation for the same reason.
RUN_FLAGS=(--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 --network=host)

say() { printf '== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

command -v podman >/dev/null || fail "podman is not installed (apt-get install podman buildah runc)"
mkdir -p "$WORK"

# --- base image -------------------------------------------------------------------------------
if ! podman image exists "$BASE_IMAGE"; then
  [ "$BASE_IMAGE" = localhost/debian-py:bookworm ] || fail "base image $BASE_IMAGE not found"
  command -v debootstrap >/dev/null || fail "debootstrap is not installed"
  say "making $BASE_IMAGE with debootstrap (about 90 s)"
  rm -rf "$WORK/rootfs"
  nice -n 10 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$WORK/rootfs" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log"; fail "debootstrap"; }
  tar -C "$WORK/rootfs" -c . | podman import - "$BASE_IMAGE" >/dev/null
  rm -rf "$WORK/rootfs"
fi

# --- build ------------------------------------------------------------------------------------
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
  [ "${NO_CACHE:-0}" != 1 ] || build_args+=(--no-cache)
  if [ -n "$TORCH_WHEELS" ]; then
    build_args+=(--build-arg TORCH_FIND_LINKS=/wheels -v "$TORCH_WHEELS:/wheels:ro")
  fi
  if [ -f "$CA_BUNDLE" ]; then
    build_args+=(--build-arg PIP_CERT=/run/host-ca.crt -v "$CA_BUNDLE:/run/host-ca.crt:ro")
  fi
  say "building $IMAGE from ./Dockerfile on $BASE_IMAGE (log: $WORK/build.log)"
  t_build=$(now)
  # --format docker: the OCI format has no HEALTHCHECK, and the check below wants it.
  nice -n 10 podman build --isolation=chroot --format docker --network=host \
    "${build_args[@]}" -t "$IMAGE" . >"$WORK/build.log" 2>&1 \
    || { tail -30 "$WORK/build.log"; fail "podman build"; }
  say "built in $(since "$t_build") s"
fi

# --- the image's configuration ----------------------------------------------------------------
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
cmd=$(podman image inspect --format '{{json .Config.Cmd}}' "$IMAGE")
health=$(podman image inspect --format '{{json .Config.Healthcheck.Test}}' "$IMAGE")
say "image user: $user  cmd: $cmd"
say "image healthcheck: $health"
case "${user%%:*}" in ""|0|root) fail "the image runs as root ($user)";; esac
[ "$cmd" = '["trafficcast","serve"]' ] || fail "unexpected CMD $cmd"
case "$health" in '["CMD","python3","-c",'*/healthz*) ;; *) fail "no exec-form healthcheck";; esac

# --- run --------------------------------------------------------------------------------------
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
name="trafficcast-verify-$$"
state_vol="$name-state"
cleanup() {
  podman rm -f -v "$name" >/dev/null 2>&1 || true
  podman volume rm -f "$state_vol" >/dev/null 2>&1 || true
}
trap cleanup EXIT
podman volume create "$state_vol" >/dev/null

say "starting $name on 127.0.0.1:$port (read-only root, all capabilities dropped)"
t_start=$(now)
# The systemd timer for healthchecks can't be set up here (no systemd): podman says so on
# stderr, harmlessly; the healthcheck is run by hand below.
podman run -d --name "$name" "${RUN_FLAGS[@]}" \
  --read-only --cap-drop=ALL --security-opt=no-new-privileges \
  -e TRAFFICCAST_PORT="$port" -e TRAFFICCAST_TORCH_THREADS=2 \
  -v "$state_vol:/state" "$IMAGE" >/dev/null 2>"$WORK/run.err" \
  || { cat "$WORK/run.err"; fail "podman run"; }

ready=""
while [ "$(since "$t_start" | cut -d. -f1)" -lt "$MAX_READY_S" ]; do
  if python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/readyz', timeout=2)" 2>/dev/null; then
    ready=$(since "$t_start"); break
  fi
  [ "$(podman inspect --format '{{.State.Running}}' "$name")" = true ] \
    || { podman logs "$name" | tail -30; fail "the container stopped"; }
  sleep 0.2
done
[ -n "$ready" ] || { podman logs "$name" | tail -30; fail "not ready in $MAX_READY_S s"; }
say "ready: /readyz answered 200 after $ready s"

# --- a real forecast --------------------------------------------------------------------------
# The request is built inside the container from the bundled week the image ships (the host
# needs no pandas): the hour before the week's last hour as history, that last hour as truth.
podman exec "$name" python3 -c '
import json, math
from trafficcast import data
week = data.read_speeds(data.sample_speeds_path())
n = week.num_steps
def rows(a, b):
    return [[float(v) if m and not math.isnan(v) else None for v, m in zip(vals, mask)]
            for vals, mask in zip(week.values[a:b], week.mask[a:b])]
print(json.dumps({
    "request": {"timestamps": [t.isoformat() for t in week.index[n - 24:n - 12]],
                "sensors": week.sensor_ids, "speeds": rows(n - 24, n - 12)},
    "truth_timestamps": [t.isoformat() for t in week.index[n - 12:n]],
    "truth": rows(n - 12, n),
}))' >"$WORK/forecast-case.json"

python3 - "$port" "$WORK/forecast-case.json" <<'PY'
import json, math, sys, urllib.request

port, case_path = sys.argv[1], sys.argv[2]
case = json.load(open(case_path))
req = urllib.request.Request(
    f"http://127.0.0.1:{port}/v1/forecast",
    data=json.dumps(case["request"]).encode(),
    headers={"Content-Type": "application/json"},
)
with urllib.request.urlopen(req, timeout=60) as resp:
    status, answer = resp.status, json.load(resp)
assert status == 200, status
assert answer["sensors"] == case["request"]["sensors"], "sensor order changed"
assert answer["timestamps"] == case["truth_timestamps"], answer["timestamps"]
forecast, truth = answer["forecast"], case["truth"]
assert len(forecast) == 12 and all(len(r) == len(truth[0]) for r in forecast)
assert all(math.isfinite(v) and 0 <= v <= 120 for r in forecast for v in r), "implausible speed"
last = case["request"]["speeds"][-1]
err, pers = [], []
for f_row, t_row in zip(forecast, truth):
    for j, (f, t) in enumerate(zip(f_row, t_row)):
        if t:  # 0 or null: missing, counts nowhere (as in the metrics)
            err.append(abs(f - t))
            if last[j]:
                pers.append(abs(last[j] - t))
mae, pmae = sum(err) / len(err), sum(pers) / len(pers)
print(f"== forecast: model {answer['model_version']}, {len(answer['sensors'])} sensors x "
      f"{len(forecast)} steps ({answer['timestamps'][0]} .. {answer['timestamps'][-1]}); "
      f"MAE against the observed hour {mae:.2f} mph (persistence {pmae:.2f} mph)")
assert mae < 10.0, f"forecast MAE {mae:.2f} mph is not a working model"
PY

# --- healthcheck, user, filesystem --------------------------------------------------------------
podman healthcheck run "$name" >/dev/null 2>&1 || fail "the image's HEALTHCHECK failed"
say "healthcheck: the image's own HEALTHCHECK command passed"

pid=$(podman inspect --format '{{.State.Pid}}' "$name")
host_uids=$(awk '/^Uid:/ {print $2, $3, $4, $5}' "/proc/$pid/status")
inside=$(podman exec "$name" sh -c 'id -un; tr "\0" " " </proc/1/cmdline')
say "process: uids (real effective saved fs) $host_uids; inside: $(echo "$inside" | tr '\n' ' ')"
for u in $host_uids; do [ "$u" != 0 ] || fail "the service process runs as root"; done
grep -q libtcmalloc_minimal "/proc/$pid/maps" || fail "the service process does not use tcmalloc"
say "allocator: tcmalloc mapped into the service process"
podman exec "$name" sh -c 'touch /opt/venv/x 2>/dev/null' && fail "root filesystem is writable"
podman exec "$name" test -s /state/observations.sqlite3 || fail "no observations database in /state"
say "filesystem: root read-only, observations database written to the /state volume"

# --- figures ----------------------------------------------------------------------------------
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
base_size=$(podman image inspect --format '{{.Size}}' "$BASE_IMAGE")
python3 -c "import sys; s, b = int(sys.argv[1]), int(sys.argv[2]); print(f'== image size: {s / 1e6:.0f} MB ({s / 2**20:.0f} MiB), of which base {b / 1e6:.0f} MB, trafficcast layers {(s - b) / 1e6:.0f} MB')" "$size" "$base_size"
say "start to ready: $ready s"
say "OK"
