#!/usr/bin/env python3
"""Renders bench/compare.sh results (JSON lines from corriente-bench) as Markdown tables with
ratios: Corriente against the floor of the same coalescing window, and against nginx-rtmp."""
import json
import sys
from collections import defaultdict


def load(path):
    runs = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                r = json.loads(line)
                runs[r["label"]] = r
    return runs


def server(r):
    return next((s for s in r["servers"] if s["label"] == "server"), r["servers"][0])


def per_gbit(r):
    return server(r)["cpu_seconds_per_gbit"]


def fmt(v, spec=".3f"):
    return "—" if v is None else format(v, spec)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def quant(q, key):
    return None if not q else q[key]


def main(path):
    runs = load(path)
    fan_out = defaultdict(dict)
    fan_in = defaultdict(dict)
    for label, r in runs.items():
        parts = label.split("/")
        if r["mode"] == "fan_out" and len(parts) in (3, 4):
            readers = parts[3] if len(parts) == 4 else "lazy"
            fan_out[(readers, int(parts[2]))][f"{parts[0]}/{parts[1]}"] = r
        elif r["mode"] == "fan_in" and len(parts) == 3:
            fan_in[int(parts[2])][parts[0]] = r

    print("### Fan-out: one 2.5 Mbit/s stream, N viewers\n")
    print("CPU is the server process's CPU-seconds per delivered Gbit (edge only for Corriente; "
          "its origin is listed apart). Ratios compare with the floor of the same write window "
          "and with nginx-rtmp in the same run.\n")
    print("Readers: `lazy` viewers read every 100 ms and discard in the kernel; `player` viewers "
          "read as data arrives and copy every byte out, as players do. Probes read at once in "
          "both.\n")
    print("| readers | N | server | kept up | Mbit/s | CPU-s/Gbit | × floor | × nginx | TTFF p50 / p99 ms "
          "| latency p50 / p99 / max ms | KB/viewer | origin CPU-s | load gen CPU-s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for readers, n in sorted(fan_out, key=lambda k: (k[0] != "lazy", k[0], k[1])):
        group = fan_out[(readers, n)]
        nginx = group.get("nginx/rtmp")
        for key in ["floor-20ms/rtmp", "corriente-ll/rtmp", "corriente-ll/http_flv", "nginx/rtmp",
                    "floor-100ms/rtmp", "corriente-tp/rtmp", "corriente-tp/http_flv"]:
            r = group.get(key)
            if not r:
                continue
            floor_key = "floor-100ms/rtmp" if key.startswith(("corriente-tp", "floor-100ms")) else "floor-20ms/rtmp"
            floor = group.get(floor_key)
            is_floor = key.startswith("floor")
            name = {
                "floor-20ms/rtmp": "floor, 20 ms writes",
                "floor-100ms/rtmp": "floor, 100 ms writes",
                "corriente-ll/rtmp": "Corriente low-latency, RTMP",
                "corriente-ll/http_flv": "Corriente low-latency, HTTP-FLV",
                "corriente-tp/rtmp": "Corriente throughput, RTMP",
                "corriente-tp/http_flv": "Corriente throughput, HTTP-FLV",
                "nginx/rtmp": "nginx-rtmp, RTMP",
            }[key]
            s = server(r)
            origin = next((x for x in r["servers"] if x["label"] == "origin"), None)
            to_floor = None if is_floor else ratio(per_gbit(r), per_gbit(floor) if floor else None)
            to_nginx = None if (is_floor or key == "nginx/rtmp") else ratio(per_gbit(r), per_gbit(nginx) if nginx else None)
            ttff = r.get("ttff_ms")
            lat = r.get("latency_ms")
            print(f"| {readers} | {n} | {name} | {r['kept_up']}/{r['clients']} | {r['delivered_mbps']:.0f} | {fmt(per_gbit(r))} "
                  f"| {fmt(to_floor, '.2f')} | {fmt(to_nginx, '.2f')} "
                  f"| {'—' if is_floor else fmt(quant(ttff, 'p50'), '.1f') + ' / ' + fmt(quant(ttff, 'p99'), '.1f')} "
                  f"| {fmt(quant(lat, 'p50'), '.1f')} / {fmt(quant(lat, 'p99'), '.1f')} / {fmt(quant(lat, 'max'), '.1f')} "
                  f"| {fmt(s['rss_per_client_kb'], '.1f')} | {fmt(origin['cpu_seconds'] if origin else None, '.2f')} "
                  f"| {r['bench_cpu_seconds']:.2f} |")
    if fan_in:
        print("\n### Fan-in: P publishers of 2.5 Mbit/s into one origin\n")
        print("| P | server | kept up | ingest Mbit/s | CPU-s per s | publishers per core (extrapolated) |")
        print("|---|---|---|---|---|---|")
        for p in sorted(fan_in):
            for key in ["corriente", "nginx"]:
                r = fan_in[p].get(key)
                if not r:
                    continue
                s = server(r)
                busy = s["cpu_seconds"] / r["measured_seconds"]
                per_core = r["kept_up"] / busy if busy > 0 else None
                print(f"| {p} | {key} | {r['kept_up']}/{r['clients']} | {r['delivered_mbps']:.0f} "
                      f"| {busy:.3f} | {fmt(per_core, '.0f')} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "target/bench/results.jsonl")
