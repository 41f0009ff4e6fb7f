#!/usr/bin/env bash
# The fan-in part of bench/compare.sh alone (P publishers into one Corriente origin, then into
# nginx-rtmp), repeated in alternating rounds for stable ratios, on ports of its own (so it can
# run next to the test suite). Variants are NAME:DIR, DIR holding a `corriente` binary (two
# builds side by side), or NAME:DIR:ARGS with extra origin arguments separated by commas, or
# `nginx`. Prints each round's origin CPU-seconds per second and the
# ratio to nginx-rtmp in the same round.
#
#   bench/fan-in.sh                                   # P = 8 and 32, three rounds
#   VARIANTS="old:/tmp/old new:target/release nginx" ROUNDS=2 bench/fan-in.sh
#   PERF=corriente/32 bench/fan-in.sh                 # perf record -g the origin in round 1
#   VARIANTS="capped:target/release uncapped:target/release:--max-publish-bitrate,0 nginx" bench/fan-in.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PUBLISHERS=${PUBLISHERS:-"8 32"}; ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-20s}; RAMP=${RAMP:-5s}; WARMUP=${WARMUP:-3s}
VARIANTS=${VARIANTS:-"corriente:target/release nginx"}
OUT=${OUT:-target/bench-fan-in}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
RESULTS="$OUT/results.jsonl"; : > "$RESULTS"
BENCH=${BENCH:-target/release/corriente-bench}
MEDIA=target/bench/media-720p30.flv

# bench_media, start_cluster, start_nginx_rtmp and cleanup from lib.sh (no bench_setup: no
# build, so it can run next to the test suite); this script's own start_corriente (a build of
# its choice, on ports of its own, arguments to the origin).
. bench/lib.sh
bench_media "$MEDIA"
start_corriente() { # $1: directory of the binary, $2: extra origin arguments, comma-separated
  start_cluster "$1" 26 "${2:-}" ""
  SERVER_PID=$ORIGIN_PID
  URL=rtmp://127.0.0.1:26935/live
}

start_nginx() {
  start_nginx_rtmp 27935
  SERVER_PID=$NGINX_PID
  URL=rtmp://127.0.0.1:27935/live
}

common=(--file "$MEDIA" --ramp "$RAMP" --warmup "$WARMUP" --duration "$DURATION" --json "$RESULTS" --quiet)
for round in $(seq 1 "$ROUNDS"); do
  for p in $PUBLISHERS; do
    for v in $VARIANTS; do
      name=${v%%:*}
      if [ "$name" = nginx ]; then start_nginx; else
        spec=${v#*:}; dir=${spec%%:*}; args=""; [ "$spec" = "$dir" ] || args=${spec#*:}
        start_corriente "$dir" "$args"
      fi
      label="$name/fan_in/$p/r$round"
      echo "== $label" >&2
      perf_pid=""
      if [ "${PERF:-}" = "$name/$p" ] && [ "$round" = 1 ]; then
        # Round 1 of that variant is profiled (and so not comparable); the others are not.
        (sleep 8; perf record -e cpu-clock -g -p "$SERVER_PID" -o "$OUT/perf-$name-$p.data" -- sleep 15 >/dev/null 2>&1) & perf_pid=$!
      fi
      $BENCH fan-in --label "$label" --publish "$URL" --publishers "$p" --pid server="$SERVER_PID" "${common[@]}" >/dev/null || true
      [ -z "$perf_pid" ] || wait "$perf_pid"
      cleanup; sleep 1
    done
  done
done

python3 - "$RESULTS" <<'PY'
import json, sys, collections
rounds = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    r = json.loads(line)
    name, _, p, rnd = r["label"].split("/")
    s = next(x for x in r["servers"] if x["label"] == "server")
    rounds[(int(p), rnd)][name] = (s["cpu_seconds"] / r["measured_seconds"], r["kept_up"], r["clients"])
print("| P | round | " + " | ".join(f"{n} CPU-s/s (kept up)" for n in next(iter(rounds.values()))) + " |")
for (p, rnd), d in sorted(rounds.items()):
    nginx = d.get("nginx", (None,))[0]
    cells = [f"{c:.4f} ({k}/{n})" + (f" = {c / nginx:.2f}x nginx" if nginx and name != "nginx" else "")
             for name, (c, k, n) in d.items()]
    print(f"| {p} | {rnd} | " + " | ".join(cells) + " |")
PY
