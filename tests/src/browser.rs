//! Headless Chromium for the browser tests: Debian's `chromium`, driven by Playwright from the
//! node scripts in `tests/browser/` (which share `tests/browser/lib.mjs`). A [`Script`] runs
//! one of them and reads its JSON lines: `{"need":"..."}` asks the test to act and waits for
//! `ok` on stdin, `{"error":"..."}` is a failure, `{"result":{...}}` is what it measured.
//! Screenshots land in [`artifacts_dir`].

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::corriente_bin;

/// How long a script may take to give its result; the scripts wait on conditions, so this
/// only catches a hang.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a script may take to exit once it gave its result.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// `tests/browser`: the node scripts, their `package.json` and `node_modules`.
pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// `target/artifacts/browser`, next to the binary under test: the scripts' screenshots.
pub fn artifacts_dir() -> PathBuf {
    let bin = corriente_bin();
    let target = bin
        .parent()
        .and_then(Path::parent)
        .expect("corriente lives in target/<profile>/");
    target.join("artifacts").join("browser")
}

/// The Chromium executable: `$CHROMIUM`, or Debian's `/usr/bin/chromium`.
pub fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned())
}

/// Fails, saying what to install, unless Chromium and `playwright-core` (in
/// `tests/browser/node_modules`) are there. Tests call it first, before starting anything.
pub fn require_chromium_and_playwright() -> Result<()> {
    if !Path::new(&chromium()).exists() {
        bail!(
            "{} is missing: install Debian's chromium (tests/run does)",
            chromium()
        );
    }
    if !browser_dir().join("node_modules/playwright-core").exists() {
        bail!("playwright-core is missing: run `npm ci --prefix tests/browser` (tests/run does)");
    }
    Ok(())
}

/// A running `node tests/browser/NAME`. Killed when dropped.
pub struct Script {
    child: Child,
    /// Where the script answers `{"need":..}` lines; `None` for a script that asks nothing.
    to_script: Option<ChildStdin>,
    from_script: Lines<BufReader<ChildStdout>>,
    artifacts: PathBuf,
}

impl Script {
    /// Starts `node tests/browser/NAME` (stdin closed) with `env`, plus `CORRIENTE_ARTIFACTS`
    /// (created if missing) and `CHROMIUM`; its stderr (progress) goes to the test's.
    pub fn start(name: &str, env: &[(&str, &str)]) -> Result<Script> {
        Script::spawn(name, env, false)
    }

    /// [`Script::start`] for a script that asks the test to act: read its result with
    /// [`Script::result_answering`].
    pub fn start_asking(name: &str, env: &[(&str, &str)]) -> Result<Script> {
        Script::spawn(name, env, true)
    }

    fn spawn(name: &str, env: &[(&str, &str)], asks: bool) -> Result<Script> {
        let artifacts = artifacts_dir();
        std::fs::create_dir_all(&artifacts)?;
        let mut child = Command::new("node")
            .arg(browser_dir().join(name))
            .current_dir(browser_dir())
            .envs(env.iter().copied())
            .env("CORRIENTE_ARTIFACTS", &artifacts)
            .env("CHROMIUM", chromium())
            .stdin(if asks { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("run node (is Node.js installed?)")?;
        let to_script = if asks {
            Some(child.stdin.take().context("stdin")?)
        } else {
            None
        };
        let from_script = BufReader::new(child.stdout.take().context("stdout")?).lines();
        Ok(Script {
            child,
            to_script,
            from_script,
            artifacts,
        })
    }

    /// The script's result (within [`RUN_TIMEOUT`]), or its error. For a script that asks
    /// nothing.
    pub async fn result(&mut self) -> Result<Value> {
        self.result_answering(async |need: &str| -> Result<()> {
            bail!("browser script asked for {need:?}")
        })
        .await
    }

    /// The script's result (within [`RUN_TIMEOUT`]), or its error; each `{"need":NEED}` it
    /// prints on the way is done by `answer(NEED)`, then acknowledged with `ok`.
    pub async fn result_answering(
        &mut self,
        mut answer: impl AsyncFnMut(&str) -> Result<()>,
    ) -> Result<Value> {
        let artifacts = &self.artifacts;
        let from_script = &mut self.from_script;
        let to_script = &mut self.to_script;
        tokio::time::timeout(RUN_TIMEOUT, async {
            while let Some(line) = from_script.next_line().await? {
                let msg: Value = serde_json::from_str(&line)
                    .with_context(|| format!("browser script printed {line:?}"))?;
                if let Some(need) = msg["need"].as_str() {
                    answer(need).await?;
                    let stdin = to_script
                        .as_mut()
                        .context("the browser script asked, but was started without stdin")?;
                    stdin.write_all(b"ok\n").await?;
                    stdin.flush().await?;
                } else if let Some(error) = msg["error"].as_str() {
                    bail!(
                        "browser script failed: {error} (screenshots in {})",
                        artifacts.display()
                    );
                } else if msg.get("result").is_some() {
                    return Ok(msg["result"].clone());
                }
            }
            bail!("browser script ended without a result")
        })
        .await
        .context("browser script timed out")?
    }

    /// Waits (30 s at most) for the script to exit, and asserts that it succeeded.
    pub async fn finish(mut self) -> Result<()> {
        let status = tokio::time::timeout(EXIT_TIMEOUT, self.child.wait())
            .await
            .context("browser script did not exit")??;
        assert!(status.success(), "browser script exited with {status}");
        Ok(())
    }
}

/// Asserts that every file in the result's `screenshots` is there and more than 10 kB (an
/// image with something in it).
pub fn assert_screenshots(result: &Value) -> Result<()> {
    for shot in result["screenshots"].as_array().into_iter().flatten() {
        let path = Path::new(shot.as_str().unwrap_or_default());
        let size = std::fs::metadata(path)
            .with_context(|| format!("screenshot {}", path.display()))?
            .len();
        assert!(size > 10_000, "{} is {size} bytes", path.display());
    }
    Ok(())
}
