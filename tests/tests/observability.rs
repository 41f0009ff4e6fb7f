//! What operators see: Prometheus metrics on every node, traces that follow a viewer across
//! processes, readiness that tells the truth, and a Grafana dashboard that only asks for
//! metrics the code exports.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Result;
use corriente_tests::clients::{play_flv, play_rtmp};
use corriente_tests::media::{Publisher, av_small, ffprobe};
use corriente_tests::otlp::Receiver;
use corriente_tests::{Cluster, Metrics, Node, Redis, wait_for};

#[tokio::test(flavor = "multi_thread")]
async fn every_role_exports_metrics_that_describe_the_stream() -> Result<()> {
    let cluster = Cluster::start(1, 1, 1, "3s")?;
    let (control, origin, edge) = (&cluster.control[0], &cluster.origins[0], &cluster.edges[0]);
    let _publisher = Publisher::start(&av_small()?, &origin.ingest_url("obs"))?;
    cluster.wait_live("obs").await?;
    let viewers = [
        tokio::spawn({
            let a = edge.addr("edge-rtmp");
            async move { play_rtmp(a, "live", "obs", Duration::from_secs(6)).await }
        }),
        tokio::spawn({
            let a = edge.addr("edge-http");
            async move { play_flv(a, "/live/obs.flv", Duration::from_secs(6)).await }
        }),
    ];
    let first = wait_for(Duration::from_secs(5), "two viewers counted", || async {
        let m = edge.metrics().await.ok()?;
        let both = m.value("corriente_viewers", &[("protocol", "rtmp")])? == 1.0
            && m.value("corriente_viewers", &[("protocol", "http_flv")])? == 1.0;
        both.then_some(m)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (edge_m, origin_m, control_m) = (
        edge.metrics().await?,
        origin.metrics().await?,
        control.metrics().await?,
    );

    // Edge: viewers, one pull, bytes growing, histograms filled.
    assert_eq!(edge_m.value("corriente_relay_pulls_active", &[]), Some(1.0));
    assert_eq!(
        edge_m.value("corriente_streams_active", &[("role", "edge")]),
        Some(1.0)
    );
    for protocol in ["rtmp", "http_flv"] {
        let before = first
            .value("corriente_bytes_out_total", &[("protocol", protocol)])
            .unwrap_or(0.0);
        let after = edge_m
            .value("corriente_bytes_out_total", &[("protocol", protocol)])
            .unwrap_or(0.0);
        assert!(
            after > before + 50_000.0,
            "{protocol} bytes out grew from {before} to {after}"
        );
    }
    assert!(
        edge_m
            .value("corriente_time_to_first_frame_seconds_count", &[])
            .unwrap_or(0.0)
            >= 2.0
    );
    assert!(
        edge_m
            .value("corriente_relay_lag_seconds_count", &[])
            .unwrap_or(0.0)
            > 30.0
    );
    assert!(
        edge_m
            .value("corriente_bytes_in_total", &[("protocol", "relay")])
            .unwrap_or(0.0)
            > 0.0
    );
    // Origin: one publisher, one relay subscriber, bytes in.
    assert_eq!(origin_m.value("corriente_publishers", &[]), Some(1.0));
    assert_eq!(
        origin_m.value("corriente_streams_active", &[("role", "origin")]),
        Some(1.0)
    );
    assert_eq!(
        origin_m.value("corriente_viewers", &[("protocol", "relay")]),
        Some(1.0)
    );
    assert!(
        origin_m
            .value("corriente_bytes_in_total", &[("protocol", "rtmp")])
            .unwrap_or(0.0)
            > 100_000.0
    );
    // Control plane: requests by method and code, registry latency.
    assert!(
        control_m
            .value(
                "corriente_control_requests_total",
                &[("method", "heartbeat"), ("code", "ok")]
            )
            .unwrap_or(0.0)
            > 0.0
    );
    assert!(
        control_m
            .value(
                "corriente_control_requests_total",
                &[("method", "lookup_stream"), ("code", "ok")]
            )
            .unwrap_or(0.0)
            >= 1.0
    );
    assert!(
        control_m
            .value(
                "corriente_registry_operation_duration_seconds_count",
                &[("operation", "claim")]
            )
            .unwrap_or(0.0)
            >= 1.0
    );
    for (role, m) in [
        ("edge", &edge_m),
        ("origin", &origin_m),
        ("control-plane", &control_m),
    ] {
        // Process metrics, and the node's identity on every series.
        assert!(
            m.value("process_resident_memory_bytes", &[]).unwrap_or(0.0) > 1e6,
            "{role}: RSS"
        );
        assert!(
            m.value("process_open_fds", &[]).unwrap_or(0.0) > 0.0,
            "{role}: open fds"
        );
        assert!(
            m.value("process_cpu_seconds_total", &[]).is_some(),
            "{role}: CPU"
        );
        assert!(
            m.value("corriente_bytes_out_total", &[("role", role)])
                .is_some()
                || role == "control-plane"
        );
        assert_bounded_labels(role, m);
    }
    for v in viewers {
        v.await??;
    }
    Ok(())
}

/// No label value is a stream name or a network address.
fn assert_bounded_labels(role: &str, m: &Metrics) {
    for (metric, label, value) in m.label_values() {
        let forbidden = value == "obs"
            || value.contains("live/")
            || value.contains("127.0.0.1")
            || value.parse::<std::net::SocketAddr>().is_ok();
        assert!(!forbidden, "{role}: {metric} has {label}={value:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_viewers_lookup_and_pull_are_one_trace_across_processes() -> Result<()> {
    let receiver = Receiver::start().await?;
    let endpoint = receiver.endpoint();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test"),
    ];
    let redis = Redis::start()?;
    let redis_url = redis.url();
    let control = Node::start_with_env(
        "control-plane",
        &[
            "control-plane",
            "--grpc",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--redis",
            &redis_url,
        ],
        &["control-grpc", "admin"],
        &env,
    )?;
    let grpc = control.grpc_url();
    let origin = Node::start_with_env(
        "origin",
        &[
            "origin",
            "--rtmp",
            "127.0.0.1:0",
            "--relay",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--control",
            &grpc,
        ],
        &["origin-rtmp", "origin-relay", "admin"],
        &env,
    )?;
    let edge = Node::start_with_env(
        "edge",
        &[
            "edge",
            "--rtmp",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--control",
            &grpc,
        ],
        &["edge-rtmp", "edge-http", "admin"],
        &env,
    )?;
    let _publisher = Publisher::start(&av_small()?, &origin.ingest_url("traced"))?;
    wait_for(Duration::from_secs(20), "the stream to play", || async {
        ffprobe(&edge.flv_url("traced"))
            .await
            .ok()
            .filter(|s| !s.is_empty())
    })
    .await?;

    // The edge's lookup reaches the control plane and its relay pull reaches the origin, in
    // the trace the viewer's session started.
    let trace = wait_for(
        Duration::from_secs(15),
        "a trace spanning edge, control plane and origin",
        || async {
            let spans = receiver.spans();
            let mut services: BTreeMap<Vec<u8>, BTreeSet<String>> = BTreeMap::new();
            for s in &spans {
                services
                    .entry(s.trace_id.clone())
                    .or_default()
                    .insert(format!("{}:{}", s.service, s.name));
            }
            services.into_values().find(|names| {
                names.contains("corriente-edge:control.lookup_stream")
                    && names.contains("corriente-control-plane:control.lookup_stream")
                    && names.contains("corriente-edge:relay.subscribe")
                    && names.contains("corriente-origin:relay.subscribe")
                    && names.contains("corriente-edge:conn")
            })
        },
    )
    .await?;
    eprintln!("one viewer's trace: {trace:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_the_control_plane_and_draining() -> Result<()> {
    let redis = Redis::start()?;
    let control = Node::control_plane(&redis.url(), &["--lease-ttl", "2s"])?;
    let grpc_addr = control.addr("control-grpc").to_string();
    let mut edge = Node::edge(&control.grpc_url(), &["--drain-delay", "3s"])?;
    let ready = |node: &Node| {
        let admin = node.addr("admin");
        async move {
            corriente_tests::clients::http_get(admin, "/readyz")
                .await
                .ok()
        }
    };
    wait_for(Duration::from_secs(10), "the edge to be ready", || async {
        ready(&edge).await.filter(|(s, _)| *s == 200)
    })
    .await?;
    assert_eq!(
        control.admin_get("/readyz").await?.0,
        200,
        "control plane ready with Redis up"
    );

    drop(control);
    let (_, body) = wait_for(
        Duration::from_secs(6),
        "the edge to report not ready",
        || async { ready(&edge).await.filter(|(s, _)| *s == 503) },
    )
    .await?;
    assert!(body.contains("\"ready\":false"), "{body}");
    assert_eq!(edge.admin_get("/healthz").await?.0, 200, "alive all along");

    let control = Node::control_plane(&redis.url(), &["--lease-ttl", "2s", "--grpc", &grpc_addr])?;
    wait_for(
        Duration::from_secs(10),
        "the edge to be ready again",
        || async { ready(&edge).await.filter(|(s, _)| *s == 200) },
    )
    .await?;

    // Draining: not ready at once, though still up.
    edge.signal("TERM");
    let (_, body) = wait_for(
        Duration::from_secs(2),
        "not ready while draining",
        || async { ready(&edge).await.filter(|(s, _)| *s == 503) },
    )
    .await?;
    assert!(body.contains("draining"), "{body}");
    let status = edge.wait_exit(Duration::from_secs(10))?;
    assert!(status.success());

    // The control plane is not ready without Redis.
    drop(redis);
    wait_for(
        Duration::from_secs(10),
        "the control plane to report Redis gone",
        || async {
            control
                .admin_get("/readyz")
                .await
                .ok()
                .filter(|(s, _)| *s == 503)
        },
    )
    .await?;
    Ok(())
}

#[test]
fn the_grafana_dashboard_asks_only_for_exported_metrics() -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        root.join("deploy/grafana/dashboards/corriente.json"),
    )?)?;
    let mut queried = BTreeSet::new();
    collect_exprs(&dashboard, &mut queried);
    assert!(
        queried.len() >= 15,
        "the dashboard queries {} metrics",
        queried.len()
    );

    // Every metric the code registers: the names in its register_* calls.
    let mut exported = BTreeSet::new();
    for dir in [
        "core/src",
        "media/src",
        "cluster/src",
        "origin/src",
        "edge/src",
        "control-plane/src",
    ] {
        for file in walk(&root.join(dir)) {
            let text = std::fs::read_to_string(&file)?;
            for part in text.split('"').skip(1).step_by(2) {
                if part.starts_with("corriente_")
                    && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    exported.insert(part.to_owned());
                }
            }
        }
    }
    for name in &queried {
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        let known = exported.contains(base) || base.starts_with("process_") || base == "up";
        assert!(
            known,
            "the dashboard queries {name}, which the code does not export"
        );
    }
    Ok(())
}

fn collect_exprs(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                if k == "expr"
                    && let Some(expr) = v.as_str()
                {
                    for token in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                        if token.starts_with("corriente_") || token.starts_with("process_") {
                            out.insert(token.to_owned());
                        }
                    }
                }
                collect_exprs(v, out);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| collect_exprs(i, out)),
        _ => {}
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out
}

/// A fresh all-in-one node, before any stream or viewer, lists every metric family the README
/// documents (but the Redis registry's, which needs Redis), and its labelled series with known
/// label values exist at 0: refusal reasons, protocols, listeners.
#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_node_lists_every_documented_family_at_zero() -> Result<()> {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )?;
    let section = readme
        .split("## Observability")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap_or_default();
    let mut documented = BTreeSet::new();
    for line in section
        .lines()
        .filter(|l| l.trim_start().starts_with("| `"))
    {
        for part in line.split('`') {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if (name.starts_with("corriente_") || name.starts_with("process_"))
                && name != "corriente_registry_operation_duration_seconds"
            {
                documented.insert(name);
            }
        }
    }
    assert!(documented.len() > 20, "README families: {documented:?}");
    let node = Node::all(&[])?;
    let text = node.metrics().await?.0;
    let missing: Vec<&String> = documented
        .iter()
        .filter(|name| {
            !text
                .lines()
                .any(|l| l.starts_with(&format!("# TYPE {name} ")))
        })
        .collect();
    assert!(missing.is_empty(), "not on a fresh node: {missing:?}");
    let m = node.metrics().await?;
    for (name, labels) in [
        (
            "corriente_play_refused_total",
            vec![("protocol", "http_flv"), ("reason", "rate_limited")],
        ),
        (
            "corriente_publish_refused_total",
            vec![("reason", "bitrate_exceeded")],
        ),
        (
            "corriente_viewers_dropped_total",
            vec![("protocol", "rtmp"), ("reason", "write_stall")],
        ),
        (
            "corriente_connections_refused_total",
            vec![("listener", "edge-http"), ("reason", "per_ip_limit")],
        ),
        (
            "corriente_connections_cut_total",
            vec![("listener", "edge-rtmp"), ("reason", "setup_timeout")],
        ),
    ] {
        assert_eq!(m.value(name, &labels), Some(0.0), "{name}{labels:?} at 0");
    }
    Ok(())
}
