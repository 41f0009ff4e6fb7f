#!/usr/bin/env bash
# HLS serving cost, side by side in one run: N LL-HLS clients against a Corriente edge (each
# doing blocking playlist reloads and fetching every part, one keep-alive connection each),
# then the same requests — playlists and parts captured from that edge — replayed at the same
# pace against nginx serving them as static files (one worker, sendfile): the floor for serving
# those bytes over HTTP. Prints CPU seconds per delivered Gbit of each server and their ratio.
#
#   bench/hls.sh                  # 100, 500 and 1000 clients, 20 s each
#   CLIENTS="200" DURATION=10s bench/hls.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-"100 500 1000"}
DURATION=${DURATION:-20s}
RAMP=${RAMP:-5s}
WARMUP=${WARMUP:-3s}
OUT=${OUT:-target/bench}

missing=()
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
if ((${#missing[@]})); then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cargo build --release -p corriente -p corriente-bench
BIN=target/release
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RESULTS="$OUT/hls-results.jsonl"
: > "$RESULTS"
MEDIA="$OUT/media-720p30.flv"
if [ ! -f "$MEDIA" ]; then
  ffmpeg -hide_banner -loglevel error -y \
    -f lavfi -i testsrc2=size=1280x720:rate=30 -f lavfi -i sine=frequency=440:sample_rate=44100 -t 30 \
    -c:v libx264 -preset veryfast -tune zerolatency -pix_fmt yuv420p -g 60 -b:v 2500k -maxrate 2500k -bufsize 2500k \
    -c:a aac -b:a 128k -f flv "$MEDIA"
fi

pids=()
cleanup() { local pid; for pid in "${pids[@]:-}"; do kill "$pid" 2>/dev/null || true; done; pids=(); }
trap cleanup EXIT
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; return 1; }

LIMITS=(--max-connections-per-ip 0)
start_corriente() {
  $BIN/corriente control-plane --grpc 127.0.0.1:21051 --admin 127.0.0.1:21090 --log-format json 2>"$OUT/control.log" & pids+=($!)
  wait_port 21051
  $BIN/corriente origin --rtmp 127.0.0.1:21935 --relay 127.0.0.1:21052 --admin 127.0.0.1:21091 \
    --control http://127.0.0.1:21051 "${LIMITS[@]}" --publish-rate-per-ip 0 --log-format json 2>"$OUT/origin.log" & pids+=($!); ORIGIN_PID=$!
  $BIN/corriente edge --rtmp 127.0.0.1:21936 --http 127.0.0.1:21080 --admin 127.0.0.1:21092 \
    --control http://127.0.0.1:21051 "${LIMITS[@]}" --play-rate-per-ip 0 --log-format json 2>"$OUT/edge.log" & pids+=($!); EDGE_PID=$!
  wait_port 21935; wait_port 21080
  sleep 1
}

CAPTURE="$OUT/hls-capture"
start_nginx() {
  mkdir -p "$OUT/nginx-hls/logs"
  cat > "$OUT/nginx-hls/nginx.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile 20000;
error_log logs/error.log warn;
pid logs/nginx.pid;
events { worker_connections 10000; }
http {
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 1000000; keepalive_timeout 60s;
  open_file_cache max=10000 inactive=60s;
  types { application/vnd.apple.mpegurl m3u8; video/mp4 m4s; }
  server { listen 127.0.0.1:22080; root $OUT; }
}
CONF
  nginx -p "$OUT/nginx-hls" -c "$OUT/nginx-hls/nginx.conf" -g 'daemon off;' & pids+=($!)
  wait_port 22080
  NGINX_PID=$(pgrep -P "${pids[-1]}" -f "nginx: worker" | head -1)
}

common=(--file "$MEDIA" --ramp "$RAMP" --warmup "$WARMUP" --duration "$DURATION" --json "$RESULTS" --quiet)

# The capture: one client's requests and answers, 30 s of them.
start_corriente
rm -rf "$CAPTURE"
echo "== capture" >&2
$BIN/corriente-bench hls --label capture --publish rtmp://127.0.0.1:21935/live/s --url http://127.0.0.1:21080/live/s.m3u8 \
  --capture "$CAPTURE" --file "$MEDIA" --ramp 0s --warmup 1s --duration 30s --quiet >/dev/null
cleanup; sleep 1

for n in $CLIENTS; do
  start_corriente
  echo "== corriente/hls/$n" >&2
  $BIN/corriente-bench hls --label "corriente/hls/$n" --publish rtmp://127.0.0.1:21935/live/s \
    --url http://127.0.0.1:21080/live/s.m3u8 --clients "$n" --pid server=$EDGE_PID --pid origin=$ORIGIN_PID "${common[@]}" >/dev/null || echo "run failed" >&2
  cleanup; sleep 1
  start_nginx
  echo "== nginx-static/hls/$n" >&2
  $BIN/corriente-bench hls --label "nginx-static/hls/$n" --replay http://127.0.0.1:22080/hls-capture \
    --timeline "$CAPTURE/timeline" --clients "$n" --pid server=$NGINX_PID "${common[@]}" >/dev/null || echo "run failed" >&2
  cleanup; sleep 1
done

python3 - "$RESULTS" <<'PY'
import json, sys
runs = {r["label"]: r for r in map(json.loads, open(sys.argv[1])) if r["label"] != "capture"}
print(f"{'clients':>7} {'server':<14} {'Mbit/s':>8} {'kept up':>8} {'part p50/p99 ms':>16} {'CPU s/Gbit':>11} {'machine s/Gbit':>15}")
for label, r in runs.items():
    name, _, n = label.split("/")
    s = r["servers"][0]
    p = r.get("part_ms") or {}
    print(f"{n:>7} {name:<14} {r['delivered_mbps']:>8.1f} {r['kept_up_fraction']:>8.2f} {p.get('p50',0):>7.1f}/{p.get('p99',0):<8.1f} {s['cpu_seconds_per_gbit'] or 0:>11.3f} {r['machine_cpu_seconds_per_gbit'] or 0:>15.3f}")
for label, r in runs.items():
    if not label.startswith("corriente/"):
        continue
    n = label.split("/")[-1]
    ng = runs.get(f"nginx-static/hls/{n}")
    if ng and ng["servers"][0]["cpu_seconds_per_gbit"] and r["servers"][0]["cpu_seconds_per_gbit"]:
        ratio = r["servers"][0]["cpu_seconds_per_gbit"] / ng["servers"][0]["cpu_seconds_per_gbit"]
        mratio = r["machine_cpu_seconds_per_gbit"] / ng["machine_cpu_seconds_per_gbit"]
        print(f"{n:>7} clients: Corriente edge / static nginx CPU per Gbit = {ratio:.2f}x (machine {mratio:.2f}x)")
PY
echo "results: $RESULTS" >&2
