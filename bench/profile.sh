#!/usr/bin/env bash
# Where the fan-out's CPU goes, for Corriente's edge and nginx-rtmp side by side: one stream of
# about 2.5 Mbit/s to N RTMP viewers, in each reader mode, and while the viewers are steady,
# `strace -c` (system calls by count and time) and `perf record -g` (where the CPU is, user and
# kernel) of the serving process. Writes, per server and reader mode, `strace-*.txt` and
# `perf-*.txt` under $OUT/profile, and prints a summary of each.
#
#   bench/profile.sh                     # 1000 viewers, both reader modes
#   VIEWERS=500 READERS=lazy bench/profile.sh
#
# strace stops the process at every system call, so the server runs much slower while it is
# traced: its counts per second are what matters, not its times; the CPU figures of these runs
# are not comparable with compare.sh's and are not reported. perf samples at 499 Hz.
set -euo pipefail
cd "$(dirname "$0")/.."

VIEWERS=${VIEWERS:-1000}
READERS=${READERS:-"lazy player"}
SAMPLE=${SAMPLE:-8}
OUT=${OUT:-target/bench}
RAMP=3s
WARMUP=2s

. bench/lib.sh
bench_setup "nginx ffmpeg strace perf" /usr/lib/nginx/modules/ngx_rtmp_module.so=libnginx-mod-rtmp
PROF="$OUT/profile"
SYSCALLS=syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_sendmsg,syscalls:sys_enter_write,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_recvfrom,syscalls:sys_enter_read,syscalls:sys_enter_futex
mkdir -p "$PROF"

start_nginx() { start_nginx_rtmp 22935; }

# $1: label, $2: pid to profile, then corriente-bench run arguments.
profile() {
  local label=$1 pid=$2; shift 2
  echo "== $label (pid $pid)" >&2
  $BIN/corriente-bench run --label "$label" --file "$MEDIA" --ramp "$RAMP" --warmup "$WARMUP" \
    --duration "$((SAMPLE * 3 + 8))s" --quiet "$@" >/dev/null & local bench=$!
  sleep 7
  # System calls counted by the kernel's tracepoints (nothing slows down), then sampled, then
  # strace (which slows the server down: last, and its times are not the server's).
  perf stat -x, -e "$SYSCALLS" -p "$pid" -o "$PROF/syscalls-$label.csv" -- sleep "$SAMPLE" >/dev/null 2>&1 || true
  perf record -q -F 499 -g -p "$pid" -o "$PROF/perf-$label.data" -- sleep "$SAMPLE" >/dev/null 2>&1 || true
  timeout -s INT "$SAMPLE" strace -c -f -p "$pid" -o "$PROF/strace-$label.txt" 2>/dev/null || true
  wait "$bench" || true
  perf report -q -i "$PROF/perf-$label.data" --stdio --no-children --sort symbol --percent-limit 1.5 -g none \
    > "$PROF/perf-$label.txt" 2>/dev/null || true
  rm -f "$PROF/perf-$label.data"
  cleanup
  sleep 1
  echo "-- $label: system calls per second (perf stat, untraced)"
  awk -F, -v s="$SAMPLE" '$1 ~ /^[0-9]+$/ && $1 > 0 { sub("syscalls:sys_enter_", "", $3); printf "  %-12s %10.0f/s\n", $3, $1 / s }' "$PROF/syscalls-$label.csv"
  echo "-- $label: system calls while traced (strace -c; tracing slows the server)"
  head -n 12 "$PROF/strace-$label.txt"
  echo "-- $label: where the CPU goes (perf, symbols over 1.5%)"
  head -n 25 "$PROF/perf-$label.txt"
}

for readers in $READERS; do
  start_corriente --coalesce-window 10ms
  profile "corriente-ll-$readers" "$EDGE_PID" --readers "$readers" --viewers "$VIEWERS" \
    --publish rtmp://127.0.0.1:21935/live/s --play rtmp://127.0.0.1:21936/live/s
  start_nginx
  profile "nginx-$readers" "$NGINX_PID" --readers "$readers" --viewers "$VIEWERS" \
    --publish rtmp://127.0.0.1:22935/live/s --play rtmp://127.0.0.1:22935/live/s
done
echo "profiles: $PROF" >&2
