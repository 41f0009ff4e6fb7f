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

. bench/lib.sh
bench_setup "nginx ffmpeg"
RESULTS="$OUT/hls-results.jsonl"
: > "$RESULTS"

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
