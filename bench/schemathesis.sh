#!/usr/bin/env bash
# Fuzz the live service with schemathesis (all checks) on 127.0.0.1, bounded in time.
#
#   bench/schemathesis.sh [RUN_DIR] [EXAMPLES_PER_OPERATION]
#
# Starts `uvicorn trafficcast.app.service:app_from_env` on a free loopback port with RUN_DIR (default: the
# bundled run), a fresh SQLite store seeded with the last day of the bundled week, and one API key
# that schemathesis sends; runs `schemathesis run --checks all` with at most 150 s of fuzzing;
# prints the summary and stops the server. Exit status: schemathesis'.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR="${1:-app/bundled/metr-la-week}"
EXAMPLES="${2:-60}"
WORK="$(mktemp -d)"
PORT="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
KEY="schemathesis-$RANDOM$RANDOM"

TRAFFICCAST_RUN_DIR="$RUN_DIR" \
TRAFFICCAST_OBSERVATIONS_DB="$WORK/observations.sqlite3" \
TRAFFICCAST_SEED_OBSERVATIONS="data/sample/metr-la-week.h5" \
TRAFFICCAST_API_KEYS="$KEY" \
TRAFFICCAST_TORCH_THREADS=1 \
  python -m uvicorn --factory trafficcast.app.service:app_from_env --host 127.0.0.1 --port "$PORT" \
  --log-level warning >"$WORK/server.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -rf "$WORK"' EXIT

for _ in $(seq 1 600); do
  if curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$SERVER" 2>/dev/null; then cat "$WORK/server.log"; exit 1; fi
  sleep 0.2
done

set +e
timeout 180 schemathesis --config-file bench/schemathesis.toml run \
  "http://127.0.0.1:$PORT/openapi.json" \
  --checks all \
  --max-examples "$EXAMPLES" \
  --max-time 150 \
  --seed 20180430 \
  --generation-database none \
  --header "X-API-Key: $KEY" \
  --report ndjson --report-dir "$WORK/report" \
  --no-color
STATUS=$?
set -e
# Count what the server answered, by status class, from its own metrics (requests the fuzzer made).
curl -fs "http://127.0.0.1:$PORT/metrics" | python -c '
import sys, collections
counts = collections.Counter()
for line in sys.stdin:
    if line.startswith("trafficcast_http_requests_total{"):
        labels, value = line.rsplit(" ", 1)
        status = labels.split("status=\"")[1][0] + "xx"
        counts[status] += int(float(value))
print("server-side responses by class:", dict(sorted(counts.items())), "total", sum(counts.values()))
'
exit $STATUS
