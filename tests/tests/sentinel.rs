//! The cluster over Redis with Sentinel (Debian's `redis-server` and `redis-sentinel` on
//! loopback: a primary, two replicas, three sentinels): a primary killed while streams play
//! is followed without a viewer noticing, an old primary that comes back is not used, and a
//! claim that a failover loses does not give a stream to two origins.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use corriente_tests::media::{Publisher, RetryingPublisher, Viewer, av_small};
use corriente_tests::sentinel::SentinelSet;
use corriente_tests::{Node, serving, wait_for};

/// Leases long enough to ride out a failover (down after 1 s, then the election and the
/// promotion): origins keep serving for 0.8 × 10 s after their last renewal.
const TTL: &str = "10s";

struct Cluster {
    edges: Vec<Node>,
    origins: Vec<Node>,
    control: Vec<Node>,
    set: SentinelSet,
}

impl Cluster {
    fn start() -> Result<Cluster> {
        let set = SentinelSet::start(2, 3)?;
        let (control, origins, edges) = Node::roles(&set.url(), 2, 2, 2, TTL)?;
        Ok(Cluster {
            edges,
            origins,
            control,
            set,
        })
    }

    /// The sum of a counter over both control planes.
    async fn control_total(&self, metric: &str) -> Result<f64> {
        let mut total = 0.0;
        for cp in &self.control {
            total += cp.metrics().await?.value(metric, &[]).unwrap_or(0.0);
        }
        Ok(total)
    }

    /// Every stream the control plane `cp` lists, as (name, owner, epoch).
    async fn registry(&self, cp: usize) -> Option<Vec<(String, String, u64)>> {
        let (status, body) = self.control[cp].admin_get("/api/v1/streams").await.ok()?;
        if status != 200 {
            return None;
        }
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        let mut out: Vec<(String, String, u64)> = json["streams"]
            .as_array()?
            .iter()
            .filter_map(|s| {
                Some((
                    s["key"]["name"].as_str()?.to_owned(),
                    s["origin"].as_str()?.to_owned(),
                    s["epoch"].as_u64()?,
                ))
            })
            .collect();
        out.sort();
        Some(out)
    }

    /// Which origins serve `name` to edges now (their lease valid).
    async fn serving(&self, name: &str) -> Vec<usize> {
        let admins: Vec<_> = self.origins.iter().map(|o| o.addr("admin")).collect();
        serving(&admins, name).await
    }

    /// Both control planes list exactly `names`, each once, with the same owner and epoch,
    /// and exactly one origin serves each: the registry converged.
    async fn converged(&self, names: &[&str]) -> Option<Vec<(String, String, u64)>> {
        let first = self.registry(0).await?;
        let second = self.registry(1).await?;
        let listed: Vec<&str> = first.iter().map(|(n, _, _)| n.as_str()).collect();
        if first != second || listed != names {
            return None;
        }
        for name in names {
            if self.serving(name).await.len() != 1 {
                return None;
            }
        }
        Some(first)
    }
}

/// Starts a fresh short viewer of `url` every 300 ms until `stop`; counts the viewers that
/// decoded a frame within 5 s and those that did not.
fn joiners(
    urls: Vec<String>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Arc<AtomicU32>, Arc<AtomicU32>, tokio::task::JoinHandle<()>) {
    let (ok, failed) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let (ok2, failed2) = (ok.clone(), failed.clone());
    let task = tokio::spawn(async move {
        let mut round = 0usize;
        let mut running = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let url = urls[round % urls.len()].clone();
            round += 1;
            let (ok, failed) = (ok2.clone(), failed2.clone());
            running.push(tokio::spawn(async move {
                let Ok(viewer) = Viewer::start(&url) else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if viewer.frames().0 > 0 {
                        ok.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                failed.fetch_add(1, Ordering::Relaxed);
            }));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        for task in running {
            let _ = task.await;
        }
    });
    (ok, failed, task)
}

/// Kills the primary (SIGKILL) while two streams play on two edges and new viewers join;
/// with `comeback`, starts the old primary again once the sentinels promoted another.
async fn failover(comeback: bool) -> Result<()> {
    let mut cluster = Cluster::start()?;
    let media = av_small()?;
    let _a = Publisher::start(&media, &cluster.origins[0].ingest_url("a"))?;
    let _b = Publisher::start(&media, &cluster.origins[1].ingest_url("b"))?;
    let before = wait_for(
        Duration::from_secs(20),
        "live/a and live/b registered",
        || async { cluster.converged(&["a", "b"]).await },
    )
    .await?;
    let mut viewers = Vec::new();
    for edge in &cluster.edges {
        for url in [edge.rtmp_url("a"), edge.flv_url("b")] {
            viewers.push((url.clone(), Viewer::start(&url)?));
        }
    }
    for (url, viewer) in &viewers {
        let url = url.clone();
        wait_for(Duration::from_secs(20), &format!("{url} plays"), || async {
            (viewer.frames().0 > 10).then_some(())
        })
        .await?;
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let urls = cluster
        .edges
        .iter()
        .flat_map(|e| [e.flv_url("a"), e.rtmp_url("b")])
        .collect();
    let (joined, refused, joining) = joiners(urls, stop.clone());

    let old = cluster.set.primary_port().expect("a primary");
    let killed = Instant::now();
    cluster.set.node(old)?.kill();
    // A publisher that starts right away, and keeps trying, on a stream no one had.
    let _c = RetryingPublisher::start(&media, &cluster.origins[0].ingest_url("c"))?;
    let new = cluster.set.promoted(old).await?;
    let promoted = killed.elapsed();
    if comeback {
        cluster.set.node(old)?.restart()?;
    }
    // A lookup of the new stream through the other edge: a new publish and a lookup.
    let c_url = cluster.edges[1].flv_url("c");
    let c_viewer = wait_for(
        Duration::from_secs(30),
        "live/c to play through edge 2",
        || async {
            let viewer = Viewer::start(&c_url).ok()?;
            for _ in 0..40 {
                if viewer.frames().0 > 0 {
                    return Some(viewer);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None
        },
    )
    .await?;
    let c_plays = killed.elapsed();
    drop(c_viewer);
    if comeback {
        // Sentinels poll a node's INFO every 10 s outside a failover and convert the old
        // primary on the poll that finds it up as a primary: on a loaded box that took over
        // 40 s once.
        wait_for(
            Duration::from_secs(90),
            "the old primary to rejoin as a replica",
            || async {
                let node = cluster.set.nodes.iter().find(|n| n.port == old)?;
                let replicating = node
                    .cli(&["INFO", "replication"])
                    .ok()?
                    .contains(&format!("master_port:{new}"));
                (node.role().ok()? == "slave" && replicating).then_some(())
            },
        )
        .await?;
    }
    let after = wait_for(
        Duration::from_secs(30),
        "the registry to converge: a, b and c, one owner each",
        || async { cluster.converged(&["a", "b", "c"]).await },
    )
    .await?;
    // Viewers joining for a few more seconds on the new primary.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = joining.await;

    let switches = cluster
        .control_total("corriente_redis_primary_switches_total")
        .await?;
    println!(
        "primary :{old} killed; :{new} promoted after {:.1} s; a new stream published and \
         looked up through another edge {:.1} s after the kill ({:.1} s after the promotion); \
         control-plane switches: {switches}; viewers joining during the failover: {} played, \
         {} did not",
        promoted.as_secs_f64(),
        c_plays.as_secs_f64(),
        (c_plays - promoted).as_secs_f64(),
        joined.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    for (url, viewer) in &mut viewers {
        let (frames, last) = viewer.frames();
        println!(
            "{url}: {frames} frames, longest gap {:.1} s",
            viewer.longest_gap().as_secs_f64()
        );
        ensure!(viewer.is_running(), "{url}: the viewer was disconnected");
        ensure!(
            last.elapsed() < Duration::from_secs(3),
            "{url}: no frame for {:?}",
            last.elapsed()
        );
    }
    println!("registry before: {before:?}\nregistry after:  {after:?}");
    for (name, owner, epoch) in &before {
        ensure!(
            after.contains(&(name.clone(), owner.clone(), *epoch)),
            "live/{name} changed owner or epoch across the failover"
        );
    }
    ensure!(
        switches == 2.0,
        "each control plane switched once, not {switches}"
    );
    ensure!(
        c_plays - promoted < Duration::from_secs(5),
        "a new stream took {:?} after the promotion",
        c_plays - promoted
    );
    ensure!(
        refused.load(Ordering::Relaxed) == 0,
        "{} joining viewers did not play",
        refused.load(Ordering::Relaxed)
    );
    for cp in &cluster.control {
        ensure!(
            cp.logged(&format!("\"to\":\"127.0.0.1:{new}\"")),
            "a control plane did not log its switch to :{new}"
        );
    }
    if comeback {
        // The old primary came back holding what it had: no control plane used it.
        for cp in &cluster.control {
            ensure!(
                !cp.logged(&format!("\"to\":\"127.0.0.1:{old}\"")),
                "a control plane went back to the old primary"
            );
        }
    }
    Ok(())
}

/// The primary dies mid-stream: no viewer is disconnected, viewers keep joining, a new
/// stream is published and looked up within 5 s of the promotion, and the registry converges
/// with every stream's owner and epoch as they were.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_primary_is_followed_and_no_viewer_notices() -> Result<()> {
    failover(false).await
}

/// The same, with the old primary started again after the promotion: it rejoins as a
/// replica of the new one, and no control plane writes to it meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn an_old_primary_back_as_a_replica_is_not_used() -> Result<()> {
    failover(true).await
}

/// A claim written to the primary while its replicas cannot replicate (their link is cut:
/// their connections killed, and PSYNC and SYNC taken from them by the ACL) is not granted:
/// the control plane waits for a replica's acknowledgement (`WAIT`), gets none, undoes the
/// claim and refuses the publish. The primary then dies, and its promoted replica never saw
/// the claim; the stream, published to the other origin, has one owner.
#[tokio::test(flavor = "multi_thread")]
async fn a_claim_lost_in_a_failover_gives_the_stream_to_one_origin() -> Result<()> {
    let mut cluster = Cluster::start()?;
    let media = av_small()?;
    // A first stream, so that both control planes' connections exist before the cut.
    let _a = Publisher::start(&media, &cluster.origins[0].ingest_url("a"))?;
    wait_for(Duration::from_secs(20), "live/a registered", || async {
        cluster.converged(&["a"]).await
    })
    .await?;
    let old = cluster.set.primary_port().expect("a primary");
    let primary = cluster.set.node(old)?;
    // Replicas may no longer sync (the ACL takes PSYNC and SYNC away), and lose their link.
    primary.cli(&["ACL", "SETUSER", "default", "-psync", "-sync"])?;
    primary.cli(&["CLIENT", "KILL", "TYPE", "replica"])?;
    // The claim reaches the primary only.
    let refused = Instant::now();
    let lost = Publisher::start(&media, &cluster.origins[1].ingest_url("x"))?;
    let (code, _) = lost.wait(Duration::from_secs(20)).await?;
    let refused = refused.elapsed();
    let unreplicated = cluster
        .control_total("corriente_redis_claims_unreplicated_total")
        .await?;
    ensure!(code != Some(0), "the publish of live/x was not refused");
    ensure!(unreplicated >= 1.0, "no claim was counted as unreplicated");
    ensure!(
        cluster.serving("x").await.is_empty(),
        "an origin serves live/x from a claim no replica has"
    );
    cluster.set.node(old)?.kill();
    let new = cluster.set.promoted(old).await?;
    let promoted = cluster
        .set
        .nodes
        .iter()
        .find(|n| n.port == new)
        .map(|n| n.cli(&["KEYS", "*stream:live/x"]).unwrap_or_default())
        .unwrap_or_default();
    ensure!(
        promoted.is_empty(),
        "the promoted replica has the claim: {promoted}"
    );
    let _x = RetryingPublisher::start(&media, &cluster.origins[0].ingest_url("x"))?;
    let registry = wait_for(
        Duration::from_secs(30),
        "live/x published to the other origin, one owner",
        || async { cluster.converged(&["a", "x"]).await },
    )
    .await?;
    let owner_of_x = &registry.iter().find(|(n, _, _)| n == "x").expect("x").1;
    ensure!(
        cluster.serving("x").await == vec![0],
        "live/x is served by {:?}, not by the origin that holds its claim",
        cluster.serving("x").await
    );
    println!(
        "with replication cut, the claim of live/x on :{old} was refused after {:.1} s \
         ({unreplicated} unreplicated); after :{new} was promoted without it, live/x belongs \
         to {owner_of_x} alone: {registry:?}",
        refused.as_secs_f64()
    );
    Ok(())
}
