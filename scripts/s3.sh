#!/usr/bin/env bash
# Starts / stops a SeaweedFS S3 server on 127.0.0.1 for the tests, with SigV4 keys.
# `start` prints nothing but errors and waits until a signed request succeeds.
# Tests find it through the DFF_S3_* variables written to .work/s3/env.
#
# Another checkout's server may be running on this machine: every port is picked free
# at start (DFF_S3_PORT asks for a given S3 port), and the secret key is new at each
# start, so a server that accepts our signature is the one just started.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=.work/s3
KEY=dff-test-key
BUCKET=dff-test
WEED=.work/venv/bin/weed

signed() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 --aws-sigv4 "aws:amz:us-east-1:s3" --user "$KEY:$SECRET" "$@"; }

# N distinct ports free on 127.0.0.1 now (held together while picked, so no repeats).
free_ports() {
  /usr/bin/python3 - "$1" <<'PY'
import socket, sys
held = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    held.append(s)
print(" ".join(str(s.getsockname()[1]) for s in held))
PY
}

start() {
  if [ -f "$DIR/pid" ] && kill -0 "$(cat "$DIR/pid")" 2>/dev/null; then return 0; fi
  [ -x "$WEED" ] || { echo "s3: $WEED missing: run scripts/setup.sh" >&2; exit 1; }
  rm -rf "$DIR"; mkdir -p "$DIR/data" "$DIR/logs"
  SECRET=dff-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
  read -r S3 S3G MASTER MASTERG VOLUME VOLUMEG FILER FILERG ADMIN DEBUG <<< "$(free_ports 10)"
  PORT=${DFF_S3_PORT:-$S3}
  cat > "$DIR/s3.json" <<JSON
{"identities":[{"name":"dff","credentials":[{"accessKey":"$KEY","secretKey":"$SECRET"}],"actions":["Admin","Read","List","Write"]}]}
JSON
  setsid "$WEED" -logdir="$DIR/logs" mini -dir="$DIR/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -s3.port="$PORT" -s3.port.grpc="$S3G" -s3.config="$DIR/s3.json" \
    -master.port="$MASTER" -master.port.grpc="$MASTERG" -volume.port="$VOLUME" -volume.port.grpc="$VOLUMEG" \
    -filer.port="$FILER" -filer.port.grpc="$FILERG" -admin.port="$ADMIN" -debug.port="$DEBUG" \
    -filer.localSocket="$PWD/$DIR/filer.sock" -s3.localSocket="$PWD/$DIR/s3.sock" \
    -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -admin.ui=false \
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
