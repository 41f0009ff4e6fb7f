//! Credentials kept in files (a Kubernetes or Swarm secret, a file only root can read): one
//! secret per line, re-read when the file changes so a rotation needs no restart.
//!
//! Several lines mean several valid secrets at once: add the new one, move clients over,
//! then remove the old one. Blank lines and lines starting with `#` are ignored.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ring::digest;
use tracing::warn;

/// Why a secret file could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretFileError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{0} holds no secret (one per line; blank lines and # comments are ignored)")]
    Empty(PathBuf),
}

/// What the file held when it was last read.
struct Loaded {
    modified: Option<SystemTime>,
    len: u64,
    secrets: Arc<[Vec<u8>]>,
}

/// A file of secrets, re-read when its modification time or size changes. A file that turns
/// unreadable or empty keeps the last good secrets (and says so in the log) rather than
/// locking everyone out, or letting everyone in.
pub struct SecretFile {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets themselves.
        f.debug_struct("SecretFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Loaded, SecretFileError> {
    let err = |e: std::io::Error| SecretFileError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    let text = std::fs::read_to_string(path).map_err(err)?;
    let secrets: Vec<Vec<u8>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.as_bytes().to_vec())
        .collect();
    if secrets.is_empty() {
        return Err(SecretFileError::Empty(path.to_owned()));
    }
    Ok(Loaded {
        modified: meta.modified().ok(),
        len: meta.len(),
        secrets: secrets.into(),
    })
}

impl SecretFile {
    /// Reads `path` once; fails when it cannot be read or holds no secret, so a mistake shows
    /// at start-up.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, SecretFileError> {
        let path = path.into();
        let loaded = read(&path)?;
        Ok(Self {
            path,
            loaded: Mutex::new(loaded),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current secrets, re-reading the file if it changed since last time.
    pub fn secrets(&self) -> Arc<[Vec<u8>]> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let changed = match std::fs::metadata(&self.path) {
            Ok(meta) => meta.modified().ok() != loaded.modified || meta.len() != loaded.len,
            Err(_) => true,
        };
        if changed {
            match read(&self.path) {
                Ok(fresh) => *loaded = fresh,
                Err(e) => {
                    warn!(error = %e, "secret file unusable: keeping the secrets read before");
                    // Do not retry on every call until the file changes again.
                    if let Ok(meta) = std::fs::metadata(&self.path) {
                        loaded.modified = meta.modified().ok();
                        loaded.len = meta.len();
                    }
                }
            }
        }
        loaded.secrets.clone()
    }

    /// Whether `candidate` is one of the secrets. Compares SHA-256 digests, so the time taken
    /// says nothing about how much of a secret was guessed.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let want = digest::digest(&digest::SHA256, candidate);
        self.secrets()
            .iter()
            .any(|s| digest::digest(&digest::SHA256, s).as_ref() == want.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rotates_and_keeps_the_last_good_secrets() {
        let dir = std::env::temp_dir().join(format!("corriente-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secrets");
        std::fs::write(&path, "# rotation\nold-secret\n\n").unwrap();
        assert!(SecretFile::open(dir.join("missing")).is_err());
        let file = SecretFile::open(&path).unwrap();
        assert!(file.matches(b"old-secret"));
        assert!(!file.matches(b"old-secre"));
        std::fs::write(&path, "old-secret\nnew-secret-longer\n").unwrap();
        assert!(file.matches(b"new-secret-longer"));
        assert_eq!(file.secrets().len(), 2);
        std::fs::write(&path, "\n").unwrap();
        assert!(
            file.matches(b"new-secret-longer"),
            "kept the last good secrets"
        );
        std::fs::write(&path, "").unwrap();
        assert!(SecretFile::open(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
