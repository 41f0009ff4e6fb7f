#!/usr/bin/env bash
# Fan-out A/B: two or more Corriente builds or settings side by side with nginx-rtmp, at N
# viewers of one 2.5 Mbit/s stream, in both reader modes, in alternating rounds, on ports of
# its own. Variants are NAME:DIR, DIR holding a `corriente` binary, or NAME:DIR:ARGS with edge
# arguments separated by commas, or `nginx`. Prints each run's edge CPU-seconds per delivered
# Gbit, its ratio to nginx-rtmp in the same round and mode, and the latency the probes saw.
#
#   VARIANTS="grid:/tmp/old:--coalesce-window,20ms new:target/release nginx" bench/ab.sh
#   N=500 READERS=player ROUNDS=3 bench/ab.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000}; ROUNDS=${ROUNDS:-1}; READERS=${READERS:-"lazy player"}
DURATION=${DURATION:-10s}; RAMP=${RAMP:-3s}; WARMUP=${WARMUP:-2s}
VARIANTS=${VARIANTS:-"corriente:target/release nginx"}
PROTOCOL=${PROTOCOL:-rtmp}
OUT=${OUT:-target/bench-ab}
. bench/lib.sh
bench_setup "nginx ffmpeg" /usr/lib/nginx/modules/ngx_rtmp_module.so=libnginx-mod-rtmp
RESULTS="$OUT/results.jsonl"; : > "$RESULTS"

common=(--file "$MEDIA" --ramp "$RAMP" --warmup "$WARMUP" --duration "$DURATION" --json "$RESULTS" --quiet)
play_url() { if [ "$PROTOCOL" = rtmp ]; then echo rtmp://127.0.0.1:24936/live/s; else echo http://127.0.0.1:24080/live/s.flv; fi; }


for round in $(seq 1 "$ROUNDS"); do
  for readers in $READERS; do
    for v in $VARIANTS; do
      name=${v%%:*}
      label="$name/$readers/r$round"
      echo "== $label" >&2
      if [ "$name" = nginx ]; then
        start_nginx_rtmp 24937
        args=(--publish rtmp://127.0.0.1:24937/live/s --play rtmp://127.0.0.1:24937/live/s --pid server=$NGINX_PID)
      else
        spec=${v#*:}; dir=${spec%%:*}; extra=""; [ "$spec" = "$dir" ] || extra=${spec#*:}
        start_cluster "$dir" 24 "" "$extra"
        args=(--publish rtmp://127.0.0.1:24935/live/s --play "$(play_url)" --pid server=$EDGE_PID)
      fi
      $BIN/corriente-bench run --label "$label" --readers "$readers" --viewers "$N" "${common[@]}" "${args[@]}" >/dev/null \
        || echo "run $label failed" >&2
      cleanup; sleep 1
    done
  done
done

python3 - "$RESULTS" <<'PY'
import json, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
nginx = {}
for r in runs:
    name, readers, rnd = r["label"].split("/")
    if name == "nginx":
        nginx[(readers, rnd)] = r["servers"][0]["cpu_seconds_per_gbit"]
print("| variant | readers | round | kept up | CPU-s/Gbit | × nginx | latency p50 / p99 / max ms |")
print("|---|---|---|---|---|---|---|")
for r in runs:
    name, readers, rnd = r["label"].split("/")
    cost = r["servers"][0]["cpu_seconds_per_gbit"]
    base = nginx.get((readers, rnd))
    ratio = f"{cost / base:.2f}" if base and name != "nginx" else "—"
    lat = r.get("latency_ms") or {}
    l = " / ".join(f"{lat[k]:.1f}" for k in ("p50", "p99", "max")) if lat else "—"
    print(f"| {name} | {readers} | {rnd} | {r['kept_up']}/{r['clients']} | {cost:.3f} | {ratio} | {l} |")
PY
