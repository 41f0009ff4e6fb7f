//! The crate layering of ARCHITECTURE.md, checked against what Cargo really links: for each
//! crate, `cargo tree -e normal` (its normal dependencies, transitively) must not list the crates
//! it is not meant to know. "Only the control plane knows where the registry lives" holds because
//! no origin or edge build contains `redis` or `corriente-control-plane`, not by convention.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};

/// Every package `package` links in a normal build, itself included.
fn linked(package: &str) -> Result<BTreeSet<String>> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args(["tree", "--offline", "-e", "normal", "--prefix", "none"])
        .args(["--format", "{p}", "-p", package, "--manifest-path"])
        .arg(&manifest)
        .output()
        .context("running cargo tree")?;
    ensure!(
        out.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    ensure!(
        names.contains(package) && names.len() > 1,
        "cargo tree -p {package} listed nothing: {names:?}"
    );
    Ok(names)
}

fn assert_links_none(package: &str, forbidden: &[&str]) -> Result<()> {
    let names = linked(package)?;
    let found: Vec<&&str> = forbidden.iter().filter(|f| names.contains(**f)).collect();
    ensure!(
        found.is_empty(),
        "{package} links {found:?}, which ARCHITECTURE.md's layering forbids"
    );
    Ok(())
}

#[test]
fn origins_and_edges_link_neither_redis_nor_the_control_plane() -> Result<()> {
    for role in ["corriente-origin", "corriente-edge"] {
        assert_links_none(role, &["redis", "corriente-control-plane"])?;
    }
    // And the member crate they reach the cluster through keeps it that way.
    assert_links_none("corriente-cluster", &["redis", "corriente-control-plane"])
}

#[test]
fn edge_and_origin_never_import_each_other() -> Result<()> {
    assert_links_none("corriente-edge", &["corriente-origin"])?;
    assert_links_none("corriente-origin", &["corriente-edge"])
}

#[test]
fn the_control_plane_and_the_contracts_know_no_media() -> Result<()> {
    for package in [
        "corriente-control-plane",
        "corriente-cluster",
        "corriente-proto",
    ] {
        assert_links_none(package, &["corriente-media", "rml_rtmp"])?;
    }
    Ok(())
}

#[test]
fn the_bottom_crates_know_no_cluster() -> Result<()> {
    let cluster = [
        "corriente-proto",
        "corriente-cluster",
        "corriente-control-plane",
        "tonic",
        "redis",
    ];
    assert_links_none("corriente-media", &cluster)?;
    let below_media = [&cluster[..], &["corriente-media"]].concat();
    assert_links_none("corriente-core", &below_media)?;
    assert_links_none("corriente-proto", &["corriente-core", "corriente-media"])
}
