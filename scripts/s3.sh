#!/usr/bin/env bash
# Starts / stops a SeaweedFS S3 server on 127.0.0.1 for the tests, with SigV4 keys.
# `start` prints nothing but errors and waits until a signed request succeeds.
# Tests find it through the DFF_S3_* variables written to .work/s3/env.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=.work/s3
PORT=${DFF_S3_PORT:-18333}
KEY=dff-test-key
SECRET=dff-test-secret
BUCKET=dff-test
WEED=.work/venv/bin/weed

signed() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 --aws-sigv4 "aws:amz:us-east-1:s3" --user "$KEY:$SECRET" "$@"; }

start() {
  if [ -f "$DIR/pid" ] && kill -0 "$(cat "$DIR/pid")" 2>/dev/null; then return 0; fi
  [ -x "$WEED" ] || { echo "s3: $WEED missing: run scripts/setup.sh" >&2; exit 1; }
  rm -rf "$DIR"; mkdir -p "$DIR/data" "$DIR/logs"
  cat > "$DIR/s3.json" <<JSON
{"identities":[{"name":"dff","credentials":[{"accessKey":"$KEY","secretKey":"$SECRET"}],"actions":["Admin","Read","List","Write"]}]}
JSON
  setsid "$WEED" -logdir="$DIR/logs" mini -dir="$DIR/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -s3.port="$PORT" -s3.config="$DIR/s3.json" -webdav=false -admin.ui=false \
    -master.telemetry=false > "$DIR/weed.out" 2>&1 < /dev/null &
  echo $! > "$DIR/pid"
  for _ in $(seq 1 600); do
    code=$(signed "http://127.0.0.1:$PORT/" || true)
    if [ "$code" = 200 ]; then
      code=$(signed -X PUT "http://127.0.0.1:$PORT/$BUCKET" || true)
      case "$code" in 200|409) ;; *) echo "s3: creating bucket answered $code" >&2; exit 1;; esac
      cat > "$DIR/env" <<ENV
DFF_S3_ENDPOINT=http://127.0.0.1:$PORT
DFF_S3_BUCKET=$BUCKET
DFF_S3_KEY=$KEY
DFF_S3_SECRET=$SECRET
ENV
      return 0
    fi
    kill -0 "$(cat "$DIR/pid")" 2>/dev/null || { echo "s3: weed exited; see $DIR/weed.out" >&2; tail -20 "$DIR/weed.out" >&2; exit 1; }
    sleep 0.1
  done
  echo "s3: server not ready after 60 s; see $DIR/weed.out" >&2
  exit 1
}

stop() {
  if [ -f "$DIR/pid" ]; then
    pid=$(cat "$DIR/pid")
    kill -- -"$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 -- -"$pid" 2>/dev/null || true
    rm -f "$DIR/pid" "$DIR/env"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
