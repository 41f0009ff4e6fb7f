#!/usr/bin/env bash
# Side-by-side benchmark on loopback, in one run: Corriente (control plane, origin and edge as
# separate processes, viewers on the edge) against nginx-rtmp (one worker) and the ideal
# fan-out floor, at 1 stream of about 2.5 Mbit/s (H.264 720p30 + AAC) and N viewers, plus a
# fan-in sweep of publishers into one origin. Prints a table of ratios and writes every run as
# a JSON line.
#
#   bench/compare.sh                      # the full sweep (about 25 minutes)
#   bench/compare.sh --quick              # a short smoke run
#   VIEWERS="100 500" DURATION=10s bench/compare.sh
#   READERS=player PUBLISHERS= VIEWERS=1000 bench/compare.sh   # one reader mode, no fan-in
#
# Each server is started fresh for each run, so memory per viewer is measured from a clean
# process. Runs alternate between servers at each N.
set -euo pipefail
cd "$(dirname "$0")/.."
# The servers listen on ports below Linux's ephemeral range (32768-60999): the load generator's
# thousands of client sockets (and their TIME_WAIT remains) can hold any port inside it.

VIEWERS=${VIEWERS:-"100 500 1000 2000"}
# How viewers read: `lazy` (every 100 ms, discarding in the kernel: cheap for the load generator)
# and `player` (as data arrives, copying every byte out, as players do). Both, side by side.
READERS=${READERS:-"lazy player"}
PUBLISHERS=${PUBLISHERS:-"4 8 16 32"}
DURATION=${DURATION:-20s}
RAMP=${RAMP:-5s}
WARMUP=${WARMUP:-3s}
OUT=${OUT:-target/bench}
if [ "${1:-}" = "--quick" ]; then
  VIEWERS="100 500"; PUBLISHERS="4 8"; DURATION=6s; RAMP=2s; WARMUP=2s
fi

. bench/lib.sh
bench_setup "nginx ffmpeg" /usr/lib/nginx/modules/ngx_rtmp_module.so=libnginx-mod-rtmp
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"

start_nginx() { start_nginx_rtmp 22935; }

start_floor() { # $1: window
  $BIN/corriente-bench floor --listen 127.0.0.1:23080 --file "$MEDIA" --window "$1" 2>"$OUT/floor.log" & pids+=($!); FLOOR_PID=$!
  wait_port 23080
}

common=(--file "$MEDIA" --ramp "$RAMP" --warmup "$WARMUP" --duration "$DURATION" --json "$RESULTS" --quiet)

run() { # label, then corriente-bench run arguments
  local label=$1; shift
  echo "== $label" >&2
  $BIN/corriente-bench run --label "$label" "${common[@]}" "$@" >/dev/null || echo "run $label failed" >&2
  cleanup
  sleep 1
}

for readers in $READERS; do
  # Labels: SERVER/PROTOCOL/N, with /player appended in the player reader mode.
  sfx=""; [ "$readers" = lazy ] || sfx="/$readers"
  rd=(--readers "$readers")
  for n in $VIEWERS; do
    # Low latency (the default 10 ms window) and throughput (100 ms), each against a floor
    # writing about as often (a 10 ms window makes about as many writes as a 20 ms grid).
    start_floor 20ms;  run "floor-20ms/rtmp/$n$sfx" "${rd[@]}" --play http://127.0.0.1:23080/live/x.flv --viewers "$n" --pid server=$FLOOR_PID
    start_corriente --coalesce-window 10ms; run "corriente-ll/rtmp/$n$sfx" "${rd[@]}" --publish rtmp://127.0.0.1:21935/live/s --play rtmp://127.0.0.1:21936/live/s --viewers "$n" --pid server=$EDGE_PID --pid origin=$ORIGIN_PID
    start_nginx;       run "nginx/rtmp/$n$sfx" "${rd[@]}" --publish rtmp://127.0.0.1:22935/live/s --play rtmp://127.0.0.1:22935/live/s --viewers "$n" --pid server=$NGINX_PID
    start_corriente --coalesce-window 10ms; run "corriente-ll/http_flv/$n$sfx" "${rd[@]}" --publish rtmp://127.0.0.1:21935/live/s --play http://127.0.0.1:21080/live/s.flv --viewers "$n" --pid server=$EDGE_PID --pid origin=$ORIGIN_PID
    start_floor 100ms; run "floor-100ms/rtmp/$n$sfx" "${rd[@]}" --play http://127.0.0.1:23080/live/x.flv --viewers "$n" --pid server=$FLOOR_PID
    start_corriente --coalesce-window 100ms; run "corriente-tp/rtmp/$n$sfx" "${rd[@]}" --publish rtmp://127.0.0.1:21935/live/s --play rtmp://127.0.0.1:21936/live/s --viewers "$n" --pid server=$EDGE_PID --pid origin=$ORIGIN_PID
    start_corriente --coalesce-window 100ms; run "corriente-tp/http_flv/$n$sfx" "${rd[@]}" --publish rtmp://127.0.0.1:21935/live/s --play http://127.0.0.1:21080/live/s.flv --viewers "$n" --pid server=$EDGE_PID --pid origin=$ORIGIN_PID
  done
done

for p in $PUBLISHERS; do
  start_corriente --coalesce-window 10ms
  echo "== corriente/fan_in/$p" >&2
  $BIN/corriente-bench fan-in --label "corriente/fan_in/$p" --publish rtmp://127.0.0.1:21935/live --publishers "$p" --pid server=$ORIGIN_PID "${common[@]}" >/dev/null || true
  cleanup; sleep 1
  start_nginx
  echo "== nginx/fan_in/$p" >&2
  $BIN/corriente-bench fan-in --label "nginx/fan_in/$p" --publish rtmp://127.0.0.1:22935/live --publishers "$p" --pid server=$NGINX_PID "${common[@]}" >/dev/null || true
  cleanup; sleep 1
done

python3 bench/table.py "$RESULTS"
echo "results: $RESULTS" >&2
