//! The deployment files against the binary: every container that runs `corriente` in
//! `deploy/docker-compose.yml`, `deploy/docker-stack.yml`, `deploy/Dockerfile` and the Helm
//! chart (rendered by the real `helm`) is started with its own command line and environment
//! plus `--check-config`, which parses and validates everything and exits. A renamed flag, a
//! renamed `CORRIENTE_*` variable, a bad duration or a role that does not exist fails here.
//! Drain deadlines are checked against the grace periods that must cover them.
//!
//! YAML is read with PyYAML from the venv that `deploy/tools.sh` installs (with helm) under
//! `target/tools/`; the test runs that script when the tools are missing, and fails, never
//! skips, when it cannot.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use corriente_tests::corriente_bin;
use corriente_tests::tls::TestCa;
use serde_json::Value;

/// The roles a deployment may run (`healthcheck` is for health checks, not a container).
const ROLES: [&str; 4] = ["control-plane", "origin", "edge", "all"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_path_buf()
}

/// Where `deploy/tools.sh` installs helm and the Python venv.
fn tools_dir() -> PathBuf {
    std::env::var_os("TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/tools"))
}

/// Makes sure helm and the venv are there, running `deploy/tools.sh` once if not.
fn tools() -> &'static Path {
    static TOOLS: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    let result = TOOLS.get_or_init(|| {
        let dir = tools_dir();
        let ready = |d: &Path| d.join("helm/helm").exists() && d.join("venv/bin/python").exists();
        if !ready(&dir) {
            let status = Command::new(repo_root().join("deploy/tools.sh"))
                .status()
                .map_err(|e| format!("run deploy/tools.sh: {e}"))?;
            if !status.success() {
                return Err(format!("deploy/tools.sh failed: {status}"));
            }
        }
        if ready(&dir) {
            Ok(dir)
        } else {
            Err(format!(
                "deploy/tools.sh ran but {} has no helm/helm or venv/bin/python",
                dir.display()
            ))
        }
    });
    match result {
        Ok(dir) => dir,
        Err(e) => panic!("deployment tools missing: {e}"),
    }
}

/// Every document of a YAML stream, as JSON (PyYAML: anchors and merge keys resolved).
fn yaml_documents(yaml: &str) -> Result<Vec<Value>> {
    let python = tools().join("venv/bin/python");
    let mut child = Command::new(&python)
        .args([
            "-c",
            "import json, sys, yaml\n\
             json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {}", python.display()))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(yaml.as_bytes())?;
    let output = child.wait_with_output()?;
    ensure!(
        output.status.success(),
        "PyYAML could not read the YAML: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn read(path: &str) -> Result<String> {
    std::fs::read_to_string(repo_root().join(path)).with_context(|| format!("read {path}"))
}

/// The chart rendered by helm, one JSON value per object.
fn render_chart(args: &[&str]) -> Result<Vec<Value>> {
    let output = Command::new(tools().join("helm/helm"))
        .args([
            "template",
            "corriente",
            "helm/corriente",
            "--namespace",
            "streaming",
        ])
        .args(args)
        .current_dir(repo_root())
        .output()
        .context("run helm")?;
    ensure!(
        output.status.success(),
        "helm template {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    yaml_documents(&String::from_utf8(output.stdout)?)
}

/// A container as the deployment file describes it.
#[derive(Debug, Clone)]
struct Container {
    /// Where it comes from, for messages: `docker-compose.yml service origin-1`.
    origin: String,
    /// Arguments after the `corriente` entrypoint: the role first.
    args: Vec<String>,
    /// Its environment, references resolved; `*_FILE` variables still name container paths.
    env: BTreeMap<String, String>,
    /// What the deployment mounts from secrets: a container path (a file, or a directory
    /// holding the secret's keys) → the secret (`compose secret cluster_token`,
    /// `Secret corriente-cluster-token`), and, for a directory, the file names it holds
    /// (None: every key of the secret, not known here).
    mounts: Mounts,
}

/// Container path → (secret, the file names a directory mount holds, if known).
type Mounts = BTreeMap<String, (String, Option<BTreeSet<String>>)>;

/// Variables naming a file besides the `*_FILE` ones: certificates and keys.
const FILE_VARIABLES: [&str; 5] = [
    "CORRIENTE_TLS_CERT",
    "CORRIENTE_TLS_KEY",
    "CORRIENTE_CLUSTER_CA",
    "CORRIENTE_CLUSTER_CERT",
    "CORRIENTE_CLUSTER_KEY",
];

fn names_a_file(variable: &str) -> bool {
    variable.starts_with("CORRIENTE_")
        && (variable.ends_with("_FILE") || FILE_VARIABLES.contains(&variable))
}

impl Container {
    /// The secret that provides the file at `path` in the container, if a mount does.
    fn secret_of(&self, path: &str) -> Option<&str> {
        self.mounts.iter().find_map(|(mount, (secret, files))| {
            let provided = if path == mount {
                true
            } else if let Some(file) = path
                .strip_prefix(mount.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
            {
                files.as_ref().is_none_or(|files| files.contains(file))
            } else {
                false
            };
            provided.then_some(secret.as_str())
        })
    }
}

/// The `CORRIENTE_*` variables a role reads, from its `--help`.
fn known_env(role: &str) -> Result<BTreeSet<String>> {
    let output = Command::new(corriente_bin())
        .args([role, "--help"])
        .output()?;
    ensure!(
        output.status.success(),
        "`corriente {role} --help` failed: is {role} still a role?"
    );
    let help = String::from_utf8(output.stdout)?;
    Ok(help
        .split("[env: ")
        .skip(1)
        // `[env: NAME=VALUE]`, or `[env: NAME]` for a variable whose value is hidden.
        .filter_map(|rest| rest.split(['=', ']']).next())
        .map(str::to_owned)
        .collect())
}

/// Runs the container's command line with `--check-config` in its environment alone, with
/// secret files replaced by temporary ones, and checks that it is accepted.
fn check_container(container: &Container, scratch: &Path, ca: &TestCa) -> Result<()> {
    let what = &container.origin;
    let role = container
        .args
        .first()
        .with_context(|| format!("{what}: no role in the command"))?;
    ensure!(
        ROLES.contains(&role.as_str()),
        "{what}: `{role}` is not a corriente role (one of {ROLES:?})"
    );
    let known = known_env(role)?;
    let mut env = container.env.clone();
    for (name, value) in env.iter_mut() {
        if name.starts_with("CORRIENTE_") {
            ensure!(
                known.contains(name),
                "{what}: `corriente {role}` reads no variable {name} (it reads {known:?})"
            );
        }
        ensure!(
            !value.contains("$("),
            "{what}: {name}={value} has an unresolved reference"
        );
        // Secrets are files mounted in the container: the deployment must mount something
        // there, and stand-ins take their place here, at the same path under `scratch`.
        if names_a_file(name) {
            ensure!(
                container.secret_of(value).is_some(),
                "{what}: {name}={value} names a file no secret mount provides (mounts: {:?})",
                container.mounts
            );
            let file = scratch.join(value.trim_start_matches('/'));
            std::fs::create_dir_all(file.parent().context("a file path")?)?;
            let pem = if name.contains("_CA") {
                Some(ca.ca())
            } else if name.ends_with("_CERT") {
                Some(ca.cert())
            } else if name.ends_with("_KEY") {
                Some(ca.key())
            } else {
                None
            };
            match pem {
                Some(pem) => {
                    std::fs::copy(pem, &file)?;
                }
                None => std::fs::write(&file, "not-the-real-secret\n")?,
            }
            *value = file.display().to_string();
        }
    }
    let output = Command::new(corriente_bin())
        .args(&container.args)
        .arg("--check-config")
        .env_clear()
        .envs(&env)
        .output()?;
    ensure!(
        output.status.success(),
        "{what}: `corriente {} --check-config` with {env:?} was refused ({}):\n{}",
        container.args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        stdout.starts_with("configuration OK"),
        "{what}: unexpected --check-config output: {stdout}"
    );
    Ok(())
}

fn check_all(containers: &[Container], source: &str) -> Result<()> {
    ensure!(
        !containers.is_empty(),
        "{source}: no container runs corriente"
    );
    let scratch = std::env::temp_dir().join(format!(
        "corriente-deploy-{}-{}",
        std::process::id(),
        source.replace(['/', ' '], "-")
    ));
    std::fs::create_dir_all(&scratch)?;
    let ca = TestCa::new()?;
    let mut failures = Vec::new();
    for container in containers {
        if let Err(e) = check_container(container, &scratch, &ca) {
            failures.push(format!("{e:#}"));
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let _ = std::fs::remove_dir_all(&ca.dir);
    if !failures.is_empty() {
        bail!(
            "{source}: {} container(s) refused:\n\n{}",
            failures.len(),
            failures.join("\n\n")
        );
    }
    Ok(())
}

/// A duration as the binary reads them (`250ms`, `10s`, `2m`, `1h`; a bare number is
/// seconds). The binary has already accepted it when this is asked.
fn duration(text: &str) -> Result<Duration> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().with_context(|| format!("`{text}`"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => bail!("`{text}`: unknown unit"),
    })
}

/// How long a node may take to stop after SIGTERM: drain delay (edges) + drain timeout.
fn drain_deadline(container: &Container) -> Result<Duration> {
    let get = |name: &str, default: &str| {
        duration(container.env.get(name).map_or(default, String::as_str))
    };
    Ok(get("CORRIENTE_DRAIN_DELAY", "0s")? + get("CORRIENTE_DRAIN_TIMEOUT", "10s")?)
}

/// Every container of a deployment runs with cluster credentials: the same cluster token,
/// mounted from one secret, in all of them, and never `--insecure`. Their internal ports listen
/// on the network (the --check-config run proves they need it). The control plane also has
/// an admin token, since admin actions do not come from its loopback there.
fn check_credentials(containers: &[Container], source: &str) -> Result<()> {
    let mut token_secrets = BTreeSet::new();
    for c in containers {
        let what = &c.origin;
        ensure!(
            !c.env.contains_key("CORRIENTE_INSECURE") && !c.args.iter().any(|a| a == "--insecure"),
            "{what}: runs with --insecure (an open cluster): give it the cluster token instead"
        );
        let token = c.env.get("CORRIENTE_CLUSTER_TOKEN_FILE").with_context(|| {
            format!("{what}: no CORRIENTE_CLUSTER_TOKEN_FILE: its internal ports would be open")
        })?;
        let secret = c.secret_of(token).with_context(|| {
            format!("{what}: the cluster token {token} is mounted from no secret")
        })?;
        token_secrets.insert(secret.to_owned());
        if c.args[0] == "control-plane" {
            let admin = c.env.get("CORRIENTE_ADMIN_TOKEN_FILE").with_context(|| {
                format!("{what}: no CORRIENTE_ADMIN_TOKEN_FILE: admin actions would be refused to everyone but loopback")
            })?;
            ensure!(
                c.secret_of(admin).is_some(),
                "{what}: the admin token {admin} is mounted from no secret"
            );
        }
    }
    ensure!(
        token_secrets.len() == 1,
        "{source}: every node must mount the same cluster token, not {token_secrets:?}"
    );
    Ok(())
}

// ---- Dockerfile ---------------------------------------------------------------------------

/// The image's defaults: `ENV` variables, `CMD` and the `HEALTHCHECK` command.
struct Image {
    env: BTreeMap<String, String>,
    cmd: Vec<String>,
    healthcheck: Vec<String>,
}

fn image() -> Result<Image> {
    let text = read("deploy/Dockerfile")?.replace("\\\n", " ");
    let runtime = text
        .rsplit_once("\nFROM ")
        .map(|(_, stage)| stage)
        .context("no runtime stage")?;
    let json_list = |instruction: &str| -> Result<Vec<String>> {
        let line = runtime
            .lines()
            .find(|l| l.starts_with(instruction))
            .with_context(|| format!("no {instruction} in the runtime stage"))?;
        let list = &line[line.find('[').context("exec form")?..];
        Ok(serde_json::from_str(list)?)
    };
    let entrypoint = json_list("ENTRYPOINT")?;
    ensure!(
        entrypoint == ["corriente"],
        "ENTRYPOINT is {entrypoint:?}, deploy files assume [\"corriente\"]"
    );
    let mut env = BTreeMap::new();
    for line in runtime.lines().filter(|l| l.starts_with("ENV ")) {
        let (name, value) = line[4..].trim().split_once('=').context("ENV NAME=VALUE")?;
        env.insert(name.to_owned(), value.trim_matches('"').to_owned());
    }
    let healthcheck = json_list("HEALTHCHECK")?;
    Ok(Image {
        env,
        cmd: json_list("CMD")?,
        healthcheck,
    })
}

/// A health check command must parse: against a closed port it exits 1 (unhealthy), not 2
/// (clap's usage error).
fn check_healthcheck(command: &[String], env: &BTreeMap<String, String>, what: &str) -> Result<()> {
    ensure!(
        command.first().map(String::as_str) == Some("corriente")
            && command.get(1).map(String::as_str) == Some("healthcheck"),
        "{what}: health check {command:?} is not `corriente healthcheck`"
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let output = Command::new(corriente_bin())
        .args(&command[1..])
        .env_clear()
        .envs(env)
        .env("CORRIENTE_ADMIN", closed.to_string())
        .output()?;
    ensure!(
        output.status.code() == Some(1),
        "{what}: `{}` should answer unhealthy (exit 1) here, got {}: {}",
        command.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

#[test]
fn the_image_default_command_and_health_check_are_valid() -> Result<()> {
    let image = image()?;
    assert_eq!(
        image.env.get("CORRIENTE_ADMIN").map(String::as_str),
        Some("0.0.0.0:9090"),
        "the image sets the admin address its health check asks"
    );
    let trial = Container {
        origin: "Dockerfile CMD".into(),
        args: image.cmd.clone(),
        env: image.env.clone(),
        mounts: BTreeMap::new(),
    };
    // The one deliberate exception to cluster credentials (documented in the Dockerfile):
    // the all-in-one trial keeps control gRPC, relay and admin on the container's loopback,
    // so it starts with neither a token nor --insecure; --check-config accepting it proves
    // that nothing internal listens beyond loopback.
    assert!(
        !trial
            .env
            .keys()
            .any(|k| k == "CORRIENTE_INSECURE" || k.starts_with("CORRIENTE_CLUSTER_"))
            && !trial
                .args
                .iter()
                .any(|a| a == "--insecure" || a.starts_with("--cluster-")),
        "the image's trial needs no credentials and must not run insecure: {:?} {:?}",
        trial.args,
        trial.env
    );
    check_all(std::slice::from_ref(&trial), "deploy/Dockerfile")?;
    check_healthcheck(&image.healthcheck, &image.env, "Dockerfile HEALTHCHECK")?;
    // The same command with the image's admin address (every interface) is refused: the
    // loopback admin address in CMD is what keeps the trial safe, and it must stay there.
    let exposed = Command::new(corriente_bin())
        .args(
            image
                .cmd
                .iter()
                .filter(|a| !a.contains("127.0.0.1:9090") && *a != "--admin"),
        )
        .arg("--check-config")
        .env_clear()
        .envs(&image.env)
        .output()?;
    assert!(
        !exposed.status.success()
            && String::from_utf8_lossy(&exposed.stderr).contains("without cluster credentials"),
        "the trial with its admin port on 0.0.0.0 should be refused without credentials: {}",
        String::from_utf8_lossy(&exposed.stderr)
    );
    Ok(())
}

// ---- Compose and Swarm ---------------------------------------------------------------------

/// `${VAR:-default}` and `${VAR}` as Compose interpolates them (from an empty environment),
/// and `$$` as a literal `$`.
fn interpolate(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').unwrap_or(body.len());
            if let Some((_, default)) = body[..end].split_once(":-") {
                out.push_str(default);
            }
            rest = body.get(end + 1..).unwrap_or("");
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Every Compose service running the corriente image, with the image's ENV and CMD applied.
fn compose_containers(file: &str) -> Result<Vec<(Container, Value)>> {
    let image = image()?;
    let docs = yaml_documents(&read(file)?)?;
    let services = docs[0]["services"]
        .as_object()
        .with_context(|| format!("{file}: no services"))?;
    let mut containers = Vec::new();
    for (name, service) in services {
        if !scalar(&service["image"]).contains("corriente") {
            continue;
        }
        let origin = format!("{file} service {name}");
        ensure!(
            service.get("entrypoint").is_none(),
            "{origin}: overrides the image's entrypoint"
        );
        let args = match &service["command"] {
            Value::Null => image.cmd.clone(),
            Value::Array(list) => list.iter().map(|v| interpolate(&scalar(v))).collect(),
            Value::String(line) => line.split_whitespace().map(interpolate).collect(),
            other => bail!("{origin}: command {other}"),
        };
        let mut env = image.env.clone();
        match &service["environment"] {
            Value::Null => {}
            Value::Object(map) => {
                for (k, v) in map {
                    env.insert(k.clone(), interpolate(&scalar(v)));
                }
            }
            Value::Array(list) => {
                for entry in list {
                    let entry = scalar(entry);
                    let (k, v) = entry.split_once('=').unwrap_or((&entry, ""));
                    env.insert(k.to_owned(), interpolate(v));
                }
            }
            other => bail!("{origin}: environment {other}"),
        }
        // Secrets: /run/secrets/TARGET, TARGET defaulting to the secret's key in the file.
        let mut mounts = BTreeMap::new();
        for secret in service["secrets"].as_array().into_iter().flatten() {
            let (source, target) = match secret {
                Value::String(source) => (source.clone(), source.clone()),
                Value::Object(long) => {
                    let source = scalar(&long["source"]);
                    let target = match &long["target"] {
                        Value::Null => source.clone(),
                        target => scalar(target),
                    };
                    (source, target)
                }
                other => bail!("{origin}: secret {other}"),
            };
            ensure!(
                docs[0]["secrets"][&source].is_object(),
                "{origin}: secret {source} is not declared under the top-level secrets"
            );
            let path = if target.starts_with('/') {
                target
            } else {
                format!("/run/secrets/{target}")
            };
            mounts.insert(path, (format!("compose secret {source}"), None));
        }
        containers.push((
            Container {
                origin,
                args,
                env,
                mounts,
            },
            service.clone(),
        ));
    }
    Ok(containers)
}

/// Compose's stop_grace_period must cover the drain (Docker's default is 10 s).
fn check_stop_grace(container: &Container, service: &Value) -> Result<()> {
    let grace = match &service["stop_grace_period"] {
        Value::Null => Duration::from_secs(10),
        v => duration(&scalar(v))?,
    };
    let deadline = drain_deadline(container)?;
    ensure!(
        grace > deadline,
        "{}: stop_grace_period {grace:?} does not cover drain delay + drain timeout {deadline:?}",
        container.origin
    );
    Ok(())
}

fn check_compose_file(file: &str) -> Result<Vec<Container>> {
    let image = image()?;
    let services = compose_containers(file)?;
    let containers: Vec<Container> = services.iter().map(|(c, _)| c.clone()).collect();
    check_all(&containers, file)?;
    check_credentials(&containers, file)?;
    for (container, service) in &services {
        check_stop_grace(container, service)?;
        if let Some(test) = service["healthcheck"]["test"].as_array() {
            let test: Vec<String> = test.iter().map(scalar).collect();
            ensure!(
                test.first().map(String::as_str) == Some("CMD"),
                "{}: health check {test:?}: the image has no shell, use [\"CMD\", ...]",
                container.origin
            );
            check_healthcheck(&test[1..], &image.env, &container.origin)?;
        }
    }
    Ok(containers)
}

fn roles(containers: &[Container]) -> BTreeSet<&str> {
    containers.iter().map(|c| c.args[0].as_str()).collect()
}

#[test]
fn docker_compose_services_run_with_a_valid_configuration() -> Result<()> {
    let containers = check_compose_file("deploy/docker-compose.yml")?;
    // The names deploy/prometheus/prometheus.yml scrapes.
    let names: BTreeSet<&str> = containers
        .iter()
        .map(|c| c.origin.rsplit(' ').next().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["control-plane", "origin-1", "origin-2", "edge-1", "edge-2"])
    );
    for c in containers.iter().filter(|c| c.args[0] == "origin") {
        let name = c.origin.rsplit(' ').next().unwrap_or_default();
        assert_eq!(
            c.env.get("CORRIENTE_ADVERTISE_RELAY"),
            Some(&format!("{name}:50052")),
            "{}: edges must dial this origin by its own name",
            c.origin
        );
    }
    Ok(())
}

#[test]
fn docker_stack_services_run_with_a_valid_configuration() -> Result<()> {
    let containers = check_compose_file("deploy/docker-stack.yml")?;
    assert_eq!(
        roles(&containers),
        BTreeSet::from(["control-plane", "origin", "edge"])
    );
    Ok(())
}

// ---- Helm ----------------------------------------------------------------------------------

/// Dummy values for the downward API, the way the kubelet would fill them.
fn field_ref(path: &str) -> String {
    match path {
        "status.podIP" | "status.hostIP" => "10.1.2.3".into(),
        "metadata.name" => "corriente-edge-5d9c7b9f6d-x2x7q".into(),
        "metadata.namespace" => "streaming".into(),
        "spec.nodeName" => "node-1".into(),
        _ => "value".into(),
    }
}

/// Kubernetes' `$(VAR)` expansion (variables defined earlier in the list), `$$(` → `$(`.
fn expand(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) if env.contains_key(&body[..end]) => {
                    out.push_str(&env[&body[..end]]);
                    rest = &body[end + 1..];
                }
                _ => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The Secret volumes a container mounts. A Secret mounted with `subPath` never sees an
/// update, so certificates and tokens would not rotate: refused.
fn secret_mounts(container: &Value, pod: &Value, origin: &str) -> Result<Mounts> {
    let mut mounts = BTreeMap::new();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let name = scalar(&mount["name"]);
        let volume = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == name.as_str())
            .with_context(|| format!("{origin}: volumeMount {name} has no volume"))?;
        let Some(secret) = volume["secret"].as_object() else {
            continue;
        };
        let path = scalar(&mount["mountPath"]);
        ensure!(
            mount["subPath"].is_null(),
            "{origin}: Secret volume {name} is mounted with subPath at {path}: \
             an updated Secret would never reach the pod (rotation)"
        );
        let files = secret.get("items").and_then(Value::as_array).map(|items| {
            items
                .iter()
                .map(|item| scalar(&item["path"]))
                .collect::<BTreeSet<_>>()
        });
        let source = format!("Secret {}", scalar(&secret["secretName"]));
        mounts.insert(path.trim_end_matches('/').to_owned(), (source, files));
    }
    Ok(mounts)
}

/// Every corriente container of the rendered chart, with its pod spec.
fn chart_containers(objects: &[Value], source: &str) -> Result<Vec<(Container, Value)>> {
    let mut containers = Vec::new();
    for object in objects {
        let kind = object["kind"].as_str().unwrap_or_default();
        let pod = match kind {
            "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => {
                &object["spec"]["template"]["spec"]
            }
            "Pod" => &object["spec"],
            _ => continue,
        };
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        for key in ["initContainers", "containers"] {
            for c in pod[key].as_array().into_iter().flatten() {
                if !scalar(&c["image"]).contains("corriente") {
                    continue;
                }
                let origin = format!("{source}: {kind} {name} container {}", scalar(&c["name"]));
                if let Some(command) = c["command"].as_array() {
                    ensure!(
                        command.len() == 1 && command[0] == "corriente",
                        "{origin}: command {command:?} replaces the corriente entrypoint"
                    );
                }
                let mut env = BTreeMap::new();
                for var in c["env"].as_array().into_iter().flatten() {
                    let name = scalar(&var["name"]);
                    let value =
                        if let Some(path) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                            field_ref(path)
                        } else if var["valueFrom"].is_object() {
                            "value-from-a-secret-or-config-map".into()
                        } else {
                            expand(&scalar(&var["value"]), &env)
                        };
                    env.insert(name, value);
                }
                ensure!(
                    c["envFrom"].is_null(),
                    "{origin}: envFrom hides variables from this check"
                );
                let args = c["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| expand(&scalar(a), &env))
                    .collect();
                let mounts = secret_mounts(c, pod, &origin)?;
                containers.push((
                    Container {
                        origin,
                        args,
                        env,
                        mounts,
                    },
                    object.clone(),
                ));
            }
        }
    }
    Ok(containers)
}

/// Grace period ≥ preStop sleep + drain deadlines; probes and ports on the admin address.
fn check_pod(container: &Container, workload: &Value) -> Result<()> {
    let what = &container.origin;
    let pod = &workload["spec"]["template"]["spec"];
    let spec = pod["containers"]
        .as_array()
        .and_then(|cs| {
            cs.iter()
                .find(|c| what.ends_with(&format!("container {}", scalar(&c["name"]))))
        })
        .context("container spec")?;
    let grace = Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30));
    let pre_stop = Duration::from_secs(
        spec["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .unwrap_or(0),
    );
    let deadline = pre_stop + drain_deadline(container)?;
    ensure!(
        grace > deadline,
        "{what}: terminationGracePeriodSeconds {grace:?} does not cover \
         preStop + drain delay + drain timeout ({deadline:?})"
    );
    let admin = container
        .env
        .get("CORRIENTE_ADMIN")
        .with_context(|| format!("{what}: no CORRIENTE_ADMIN (probes need a known port)"))?;
    let admin_port: u64 = admin.rsplit(':').next().unwrap_or_default().parse()?;
    let port = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "admin")
        .with_context(|| format!("{what}: no port named admin"))?;
    ensure!(
        port["containerPort"].as_u64() == Some(admin_port),
        "{what}: port admin is {}, the node listens on {admin}",
        port["containerPort"]
    );
    // Every other named port is the one the node listens on (when its address is set).
    for port in spec["ports"].as_array().into_iter().flatten() {
        let name = scalar(&port["name"]);
        let variable = match (container.args[0].as_str(), name.as_str()) {
            ("control-plane", "grpc") => "CORRIENTE_GRPC",
            (_, "rtmp") => "CORRIENTE_RTMP",
            (_, "rtmps") => "CORRIENTE_RTMPS",
            (_, "http") => "CORRIENTE_HTTP",
            (_, "https") => "CORRIENTE_HTTPS",
            (_, "relay") => "CORRIENTE_RELAY",
            _ => continue,
        };
        let addr = container
            .env
            .get(variable)
            .with_context(|| format!("{what}: port {name} but no {variable}"))?;
        ensure!(
            addr.rsplit(':').next().and_then(|p| p.parse::<u64>().ok())
                == port["containerPort"].as_u64(),
            "{what}: port {name} is {}, the node listens on {addr} ({variable})",
            port["containerPort"]
        );
    }
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &spec[probe]["httpGet"];
        ensure!(
            get["path"] == path && get["port"] == "admin",
            "{what}: {probe} should GET {path} on port admin, is {get}"
        );
    }
    let security = &spec["securityContext"];
    ensure!(
        security["readOnlyRootFilesystem"] == true
            && security["allowPrivilegeEscalation"] == false
            && security["capabilities"]["drop"] == serde_json::json!(["ALL"]),
        "{what}: securityContext {security}"
    );
    Ok(())
}

/// Every Service selects pods of a workload, and every named target port is a port of
/// their container (a TLS port added to the Service but not to the pods would not answer).
fn check_services(objects: &[Value], source: &str) -> Result<()> {
    for service in objects.iter().filter(|o| o["kind"] == "Service") {
        let name = scalar(&service["metadata"]["name"]);
        let Some(selector) = service["spec"]["selector"].as_object() else {
            continue;
        };
        let pods: Vec<&Value> = objects
            .iter()
            .map(|o| &o["spec"]["template"])
            .filter(|t| {
                selector
                    .iter()
                    .all(|(k, v)| &t["metadata"]["labels"][k] == v)
            })
            .collect();
        ensure!(!pods.is_empty(), "{source}: Service {name} selects no pod");
        for port in service["spec"]["ports"].as_array().into_iter().flatten() {
            let Some(target) = port["targetPort"].as_str() else {
                continue;
            };
            for pod in &pods {
                let named = pod["spec"]["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                    .any(|p| p["name"] == target);
                ensure!(
                    named,
                    "{source}: Service {name} targets port {target}, which its pods do not have"
                );
            }
        }
    }
    Ok(())
}

fn check_chart(source: &str, args: &[&str]) -> Result<Vec<Container>> {
    let objects = render_chart(args)?;
    let pods = chart_containers(&objects, source)?;
    let containers: Vec<Container> = pods.iter().map(|(c, _)| c.clone()).collect();
    check_all(&containers, source)?;
    check_credentials(&containers, source)?;
    for (container, workload) in &pods {
        check_pod(container, workload)?;
    }
    check_services(&objects, source)?;
    assert_eq!(
        roles(&containers),
        BTreeSet::from(["control-plane", "origin", "edge"]),
        "{source}: one workload per role"
    );
    Ok(containers)
}

#[test]
fn helm_chart_default_values_run_with_a_valid_configuration() -> Result<()> {
    let containers = check_chart("helm (default values)", &[])?;
    let origin = containers.iter().find(|c| c.args[0] == "origin").unwrap();
    assert_eq!(
        origin
            .env
            .get("CORRIENTE_ADVERTISE_RELAY")
            .map(String::as_str),
        Some("10.1.2.3:50052"),
        "origins advertise their pod IP to edges"
    );
    let control = containers
        .iter()
        .find(|c| c.args[0] == "control-plane")
        .unwrap();
    assert!(
        control.env.contains_key("CORRIENTE_REDIS_PASSWORD_FILE"),
        "the bundled Redis has a password, read from a file"
    );
    Ok(())
}

#[test]
fn helm_chart_production_values_run_with_a_valid_configuration() -> Result<()> {
    let containers = check_chart(
        "helm (values-production.yaml)",
        &["-f", "helm/corriente/values-production.yaml"],
    )?;
    let control = containers
        .iter()
        .find(|c| c.args[0] == "control-plane")
        .unwrap();
    for name in ["CORRIENTE_REDIS_PASSWORD_FILE", "CORRIENTE_REDIS_CA_FILE"] {
        assert!(
            control.env.contains_key(name),
            "production control plane sets {name}"
        );
    }
    assert!(
        !control.env["CORRIENTE_REDIS"].contains('@'),
        "no password in the Redis URL"
    );
    // TLS on: RTMPS on origins, HTTPS and RTMPS on edges, with the certificate of the
    // kubernetes.io/tls Secret (mounted as a directory, so renewals reach the pods).
    for (role, listeners) in [
        ("origin", &["CORRIENTE_RTMPS"][..]),
        ("edge", &["CORRIENTE_RTMPS", "CORRIENTE_HTTPS"][..]),
    ] {
        let c = containers.iter().find(|c| c.args[0] == role).unwrap();
        for name in listeners {
            assert!(c.env.contains_key(*name), "production {role} sets {name}");
        }
        for name in ["CORRIENTE_TLS_CERT", "CORRIENTE_TLS_KEY"] {
            assert_eq!(
                c.secret_of(&c.env[name]),
                Some("Secret corriente-tls"),
                "production {role}: {name} from the TLS Secret"
            );
        }
    }
    // Existing Secrets rather than generated ones.
    assert_eq!(
        control.secret_of(&control.env["CORRIENTE_CLUSTER_TOKEN_FILE"]),
        Some("Secret corriente-cluster-token")
    );
    assert_eq!(
        control.secret_of(&control.env["CORRIENTE_ADMIN_TOKEN_FILE"]),
        Some("Secret corriente-admin-token")
    );
    Ok(())
}

#[test]
fn helm_chart_extra_args_and_env_reach_the_binary() -> Result<()> {
    // What operators add by hand goes through the same check: a real flag and a real
    // variable are accepted...
    check_chart(
        "helm (extra args)",
        &[
            "--set-string",
            "edge.extraArgs={--viewer-max-skips,5}",
            "--set-string",
            "origin.extraEnv[0].name=CORRIENTE_CHUNK_SIZE,origin.extraEnv[0].value=8192",
            "--set",
            "redis.bundled.enabled=false,redis.external.url=redis://redis:6379",
        ],
    )?;
    // ...an open cluster is caught...
    let objects = render_chart(&[
        "--set-string",
        "edge.extraEnv[0].name=CORRIENTE_INSECURE,edge.extraEnv[0].value=true",
    ])?;
    let containers: Vec<Container> = chart_containers(&objects, "helm (insecure)")?
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    let error = check_credentials(&containers, "helm (insecure)").unwrap_err();
    assert!(format!("{error:#}").contains("--insecure"), "{error:#}");
    // ...and a misspelt one is caught.
    let objects = render_chart(&[
        "--set",
        "edge.extraEnv[0].name=CORRIENTE_DRAIN_DELAI,edge.extraEnv[0].value=5s",
    ])?;
    let containers: Vec<Container> = chart_containers(&objects, "helm (misspelt)")?
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    let error = check_all(&containers, "helm (misspelt)").unwrap_err();
    assert!(
        format!("{error:#}").contains("reads no variable CORRIENTE_DRAIN_DELAI"),
        "{error:#}"
    );
    Ok(())
}

/// The Compose cluster's ingest load balancer configuration is one HAProxy accepts (Debian's
/// `haproxy`, the version of the `haproxy:2.6` image), with a health check on every origin.
#[test]
fn the_ingest_load_balancer_configuration_is_valid() -> Result<()> {
    let path = "deploy/haproxy/haproxy.cfg";
    let output = Command::new("haproxy")
        .args(["-c", "-f", path])
        .current_dir(repo_root())
        .output()
        .context("run haproxy -c (tests/run installs haproxy)")?;
    ensure!(
        output.status.success(),
        "haproxy -c {path}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let config = read(path)?;
    for origin in ["origin-1", "origin-2"] {
        ensure!(
            config.contains(&format!("server {origin} {origin}:1935 check port 9090")),
            "{path}: no health-checked server for {origin}"
        );
    }
    Ok(())
}
