# Shared by the bench scripts (source it after `cd` to the repository root): installing what a
# bench needs, the release build, the test media, and starting and stopping servers.
#
#   bench_setup "Debian packages to have" "files that must exist=package ..."
#   start_corriente [edge arguments ...]    # control plane, origin and edge; sets ORIGIN_PID, EDGE_PID
#   start_cluster DIR PORTS ORIGIN-ARGS EDGE-ARGS  # the same from another build, ports, arguments
#   start_nginx_rtmp PORT                   # nginx-rtmp, one worker; sets NGINX_PID (the worker)
#   wait_port PORT
#   bench_media FILE                        # the test media, encoded once
#   cleanup                                 # stops everything started and waits (also on exit)

# $1: commands that must exist (each its own Debian package); the rest: `FILE=PACKAGE` pairs.
bench_install() {
  local missing=() cmd pair
  for cmd in $1; do command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd"); done
  shift
  for pair in "$@"; do [ -f "${pair%%=*}" ] || missing+=("${pair#*=}"); done
  if ((${#missing[@]})); then
    local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# Installs (see bench_install), builds the release binaries, makes `$OUT` absolute and encodes
# the 720p30 test media once (`$MEDIA`: H.264 at 2.5 Mbit/s and AAC, 30 s, GOP 2 s).
bench_setup() {
  bench_install "$@"
  cargo build --release -p corriente -p corriente-bench
  BIN=target/release
  mkdir -p "$OUT"
  OUT=$(cd "$OUT" && pwd)
  MEDIA="$OUT/media-720p30.flv"
  bench_media "$MEDIA"
}

# Encodes the 720p30 test media into $1 unless it is there.
bench_media() {
  [ -f "$1" ] && return
  mkdir -p "$(dirname "$1")"
  ffmpeg -hide_banner -loglevel error -y \
    -f lavfi -i testsrc2=size=1280x720:rate=30 -f lavfi -i sine=frequency=440:sample_rate=44100 -t 30 \
    -c:v libx264 -preset veryfast -tune zerolatency -pix_fmt yuv420p -g 60 -b:v 2500k -maxrate 2500k -bufsize 2500k \
    -c:a aac -b:a 128k -f flv "$1"
}

pids=()
# Stops everything started and waits for it to go, so the next server finds its ports free.
cleanup() { local pid; for pid in "${pids[@]:-}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]:-}"; do wait "$pid" 2>/dev/null || true; done; pids=(); }
trap cleanup EXIT

wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; return 1; }

# Every load-generator client comes from 127.0.0.1: no per-address limits here. The servers
# listen on ports below Linux's ephemeral range (32768-60999): the load generator's thousands
# of client sockets (and their TIME_WAIT remains) can hold any port inside it.
LIMITS=(--max-connections-per-ip 0)

# Control plane, origin and edge as separate processes from the `corriente` in $1, on ports
# $2051 (control), $2935/$2052 (origin RTMP/relay), $2936/$2080 (edge RTMP/HTTP) and
# $2090-$2092 (admin); $3 and $4: extra origin and edge arguments, comma-separated. Sets
# ORIGIN_PID and EDGE_PID.
start_cluster() {
  local bin=$1 p=$2 origin=() edge=()
  [ -z "${3:-}" ] || IFS=, read -r -a origin <<<"$3"
  [ -z "${4:-}" ] || IFS=, read -r -a edge <<<"$4"
  "$bin/corriente" control-plane --grpc 127.0.0.1:${p}051 --admin 127.0.0.1:${p}090 --log-format json 2>"$OUT/control.log" & pids+=($!)
  wait_port ${p}051
  "$bin/corriente" origin --rtmp 127.0.0.1:${p}935 --relay 127.0.0.1:${p}052 --admin 127.0.0.1:${p}091 \
    --control http://127.0.0.1:${p}051 "${LIMITS[@]}" --publish-rate-per-ip 0 "${origin[@]}" --log-format json 2>"$OUT/origin.log" & pids+=($!); ORIGIN_PID=$!
  "$bin/corriente" edge --rtmp 127.0.0.1:${p}936 --http 127.0.0.1:${p}080 --admin 127.0.0.1:${p}092 \
    --control http://127.0.0.1:${p}051 "${edge[@]}" "${LIMITS[@]}" --play-rate-per-ip 0 --log-format json 2>"$OUT/edge.log" & pids+=($!); EDGE_PID=$!
  wait_port ${p}935; wait_port ${p}936; wait_port ${p}080
  sleep 1
}

# start_cluster of $BIN on the 21xxx ports; arguments go to the edge.
start_corriente() { start_cluster "$BIN" 21 "" "$(IFS=,; echo "$*")"; }

# nginx-rtmp from Debian with one worker on 127.0.0.1:$1, application `live`; NGINX_PID is the
# worker's pid (the process that serves).
start_nginx_rtmp() {
  mkdir -p "$OUT/nginx/logs"
  cat > "$OUT/nginx/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;
worker_processes 1;
worker_rlimit_nofile 20000;
error_log logs/error.log warn;
pid logs/nginx.pid;
events { worker_connections 10000; }
rtmp { server { listen 127.0.0.1:$1; chunk_size 4096; application live { live on; } } }
EOF
  nginx -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" -g 'daemon off;' & pids+=($!)
  wait_port "$1"
  NGINX_PID=$(pgrep -P "${pids[-1]}" -f "nginx: worker" | head -1)
}
