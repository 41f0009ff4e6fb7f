#!/usr/bin/env bash
# Soak (not in CI): a real cluster on loopback — Redis, a control plane, two origins behind
# HAProxy (the ingest load balancer, TCP mode, /readyz health checks), two edges — with one
# 2.5 Mbit/s stream and VIEWERS viewers split over the two edges (RTMP on one, HTTP-FLV on the
# other), for DURATION. Every CHURN the origin holding the stream is drained (SIGTERM) and
# started again: its publisher is told to reconnect and lands, through HAProxy, on the other
# origin, so the publisher churns between origins and every edge fails over. Samples RSS and
# open file descriptors of every process, and reports them with the viewers' figures.
#
#   bench/soak.sh                                # 10 minutes, 2000 viewers, churn every minute
#   DURATION=2m VIEWERS=500 bench/soak.sh        # a shorter one
#
# Writes target/soak/samples.tsv (time, process, RSS kB, fds) and the load generator's JSON.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10m}
VIEWERS=${VIEWERS:-2000}
CHURN=${CHURN:-60}
OUT=${OUT:-target/soak}
mkdir -p "$OUT"

missing=()
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
if ((${#missing[@]})); then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
cargo build --release -p corriente -p corriente-bench
BIN=target/release

MEDIA="$OUT/media-720p30.flv"
if [ ! -f "$MEDIA" ]; then
  ffmpeg -hide_banner -loglevel error -y \
    -f lavfi -i testsrc2=size=1280x720:rate=30 -f lavfi -i sine=frequency=440:sample_rate=44100 -t 30 \
    -c:v libx264 -preset veryfast -tune zerolatency -pix_fmt yuv420p -g 60 -b:v 2500k -maxrate 2500k -bufsize 2500k \
    -c:a aac -b:a 128k -f flv "$MEDIA"
fi

secs() { case "$1" in *m) echo $(( ${1%m} * 60 ));; *s) echo "${1%s}";; *) echo "$1";; esac; }
TOTAL=$(secs "$DURATION")

pids=()
cleanup() { local pid; for pid in "${pids[@]:-}"; do kill "$pid" 2>/dev/null || true; done; pids=(); }
trap cleanup EXIT
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; return 1; }

# Every client comes from 127.0.0.1: no per-address limits.
LIMITS=(--max-connections-per-ip 0 --log-format json)
redis-server --port 0 --unixsocket "$PWD/$OUT/redis.sock" --save "" --appendonly no --loglevel warning --dir "$OUT" & pids+=($!); REDIS_PID=$!
for _ in $(seq 1 50); do [ -S "$OUT/redis.sock" ] && break; sleep 0.1; done
$BIN/corriente control-plane --grpc 127.0.0.1:25051 --admin 127.0.0.1:25090 --redis "unix://$PWD/$OUT/redis.sock" --log-format json 2>"$OUT/control.log" & pids+=($!); CONTROL_PID=$!
wait_port 25051

declare -A ORIGIN_PID
start_origin() { # $1: 1 or 2
  local i=$1
  local rtmp=$((25934 + i * 10)) relay=$((25051 + i)) admin=$((25090 + i))
  $BIN/corriente origin --rtmp 127.0.0.1:$rtmp --relay 127.0.0.1:$relay --admin 127.0.0.1:$admin \
    --control http://127.0.0.1:25051 --node-id "origin-$i" --publish-rate-per-ip 0 "${LIMITS[@]}" 2>>"$OUT/origin-$i.log" & pids+=($!)
  ORIGIN_PID[$i]=$!
  wait_port $rtmp
}
start_origin 1; start_origin 2
$BIN/corriente edge --rtmp 127.0.0.1:25936 --http 127.0.0.1:25080 --admin 127.0.0.1:25093 --control http://127.0.0.1:25051 \
  --node-id edge-1 --play-rate-per-ip 0 "${LIMITS[@]}" 2>"$OUT/edge-1.log" & pids+=($!); EDGE1_PID=$!
$BIN/corriente edge --rtmp 127.0.0.1:25946 --http 127.0.0.1:25081 --admin 127.0.0.1:25094 --control http://127.0.0.1:25051 \
  --node-id edge-2 --play-rate-per-ip 0 "${LIMITS[@]}" 2>"$OUT/edge-2.log" & pids+=($!); EDGE2_PID=$!
wait_port 25936; wait_port 25946

cat > "$OUT/haproxy.cfg" <<EOF
defaults
  mode tcp
  timeout connect 2s
  timeout client 60s
  timeout server 60s
frontend ingest
  bind 127.0.0.1:25900
  default_backend origins
backend origins
  balance leastconn
  option httpchk GET /readyz
  http-check expect status 200
  default-server inter 500ms fall 2 rise 2
  server origin-1 127.0.0.1:25944 check port 25091
  server origin-2 127.0.0.1:25954 check port 25092
EOF
haproxy -db -f "$OUT/haproxy.cfg" 2>"$OUT/haproxy.log" & pids+=($!)
wait_port 25900

# The encoder: reconnects whenever its connection ends, as OBS does.
( while true; do
    ffmpeg -hide_banner -loglevel error -re -stream_loop -1 -i "$MEDIA" -c copy -f flv rtmp://127.0.0.1:25900/live/soak || true
    sleep 0.5
  done ) 2>"$OUT/publisher.log" & pids+=($!)
for _ in $(seq 1 100); do curl -s http://127.0.0.1:25090/api/v1/streams | grep -q '"live/soak"' && break; sleep 0.1; done

# Viewers: half over RTMP on edge 1, half over HTTP-FLV on edge 2, for the whole soak.
half=$((VIEWERS / 2))
common=(--file "$MEDIA" --ramp 20s --warmup 5s --duration "$((TOTAL - 30))s" --quiet)
$BIN/corriente-bench run --label "soak/rtmp/edge-1" --play rtmp://127.0.0.1:25936/live/soak --viewers "$half" \
  --pid edge-1=$EDGE1_PID --json "$OUT/viewers.jsonl" "${common[@]}" >"$OUT/bench-1.log" 2>&1 & BENCH1=$!
$BIN/corriente-bench run --label "soak/http_flv/edge-2" --play http://127.0.0.1:25081/live/soak.flv --viewers "$half" \
  --pid edge-2=$EDGE2_PID --json "$OUT/viewers.jsonl" "${common[@]}" >"$OUT/bench-2.log" 2>&1 & BENCH2=$!

# Sampling and churn.
printf 'second\tprocess\trss_kb\tfds\n' >"$OUT/samples.tsv"
sample() {
  local t=$1 name pid
  for name in control edge-1 edge-2 origin-1 origin-2; do
    case $name in
      control) pid=$CONTROL_PID;; edge-1) pid=$EDGE1_PID;; edge-2) pid=$EDGE2_PID;;
      origin-1) pid=${ORIGIN_PID[1]};; origin-2) pid=${ORIGIN_PID[2]};;
    esac
    [ -d "/proc/$pid" ] || continue
    printf '%s\t%s\t%s\t%s\n' "$t" "$name" "$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")" "$(ls "/proc/$pid/fd" | wc -l)" >>"$OUT/samples.tsv"
  done
}
start=$(date +%s)
churns=0
while [ $(( $(date +%s) - start )) -lt "$TOTAL" ]; do
  elapsed=$(( $(date +%s) - start ))
  sample "$elapsed"
  if [ "$elapsed" -gt 0 ] && [ $(( elapsed % CHURN )) -lt 10 ] && [ "${last_churn:-0}" -ne $(( elapsed / CHURN )) ]; then
    last_churn=$(( elapsed / CHURN ))
    owner=$(curl -s http://127.0.0.1:25090/api/v1/streams | python3 -c 'import json,sys; s=[x for x in json.load(sys.stdin)["streams"] if x["path"]=="live/soak"]; print(s[0]["origin"] if s else "")')
    i=${owner#origin-}
    if [ -n "$owner" ] && [ -n "${ORIGIN_PID[$i]:-}" ]; then
      echo "$(date +%T) churn: draining $owner" >&2
      kill -TERM "${ORIGIN_PID[$i]}"; wait "${ORIGIN_PID[$i]}" 2>/dev/null || true
      start_origin "$i"
      churns=$((churns + 1))
    fi
  fi
  sleep 10
done
wait $BENCH1 $BENCH2 || true

python3 - "$OUT/samples.tsv" "$OUT/viewers.jsonl" "$churns" <<'EOF'
import csv, json, sys
samples = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
print(f"publisher churns (origin drained, encoder moved through HAProxy): {sys.argv[3]}")
for name in ["control", "edge-1", "edge-2", "origin-1", "origin-2"]:
    rows = [r for r in samples if r["process"] == name]
    if not rows:
        continue
    # From the first sample after the viewers' ramp (60 s) to the last: flat is the claim.
    # Origins restart at each churn, so theirs cover the current process only.
    first = next((r for r in rows if int(r["second"]) >= 60), rows[0])
    last = rows[-1]
    peak = max(int(r["rss_kb"]) for r in rows)
    print(f"{name:9} RSS {int(first['rss_kb'])//1024} MB at {first['second']} s -> {int(last['rss_kb'])//1024} MB at {last['second']} s (peak {peak//1024} MB); fds {first['fds']} -> {last['fds']}")
for line in open(sys.argv[2]):
    run = json.loads(line)
    print(json.dumps({k: run[k] for k in run if k in ("label", "clients", "connected", "failed", "kept_up", "kept_up_fraction", "delivered_mbps", "latency_ms", "first_error")}))
EOF
echo "samples: $OUT/samples.tsv, viewers: $OUT/viewers.jsonl" >&2
