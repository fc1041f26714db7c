//! Reload on change: a notify watcher on the policy sources, debounced.
//!
//! Directories are watched, not files, so editors and configuration management that replace a
//! file by renaming a new one over it are seen like any other write. Only events on the
//! policy's own sources count ([`WatchSet::matters`]): policy files recognised by name in
//! `policy.dir`, YAML files under the allowlists directory, and each file feed. Anything else in
//! those directories (the state database and its WAL, saved feed copies, editor backups) never
//! triggers a reload, so cleanpipe's own writes cannot make it reload forever.
//!
//! Events are coalesced until the sources have been quiet for `policy.reload_debounce_ms`, then
//! one reload runs on a blocking thread. A half-written file simply fails validation and the
//! old policy stays; the final write triggers another reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::policy::sources::is_policy_file;
use crate::store::PolicyStore;

/// A running watcher; dropping it stops watching.
pub struct PolicyWatcher {
    _watcher: RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PolicyWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path}: {source}")]
pub struct WatchError {
    path: PathBuf,
    source: notify::Error,
}

/// The policy's sources on disk: what is watched and which changes count.
#[derive(Debug, Clone, Default)]
pub struct WatchSet {
    policy_dir: Option<PathBuf>,
    allowlists: Option<PathBuf>,
    /// Files watched one by one: feed files, and the targets of symlinked policy files.
    feed_files: Vec<PathBuf>,
}

/// `p` made absolute and free of symlinks where it exists (event paths are compared with it).
fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned())
}

impl WatchSet {
    /// The sources named by a configuration.
    pub fn from_config(c: &Config) -> Self {
        // Policy files that are symlinks: their targets change where nothing else is watched.
        let linked: Vec<PathBuf> = c
            .policy
            .dir
            .as_deref()
            .and_then(|d| std::fs::read_dir(d).ok())
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_symlink()
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(is_policy_file)
            })
            .filter_map(|p| std::fs::canonicalize(p).ok())
            .collect();
        Self {
            policy_dir: c.policy.dir.as_deref().map(canonical),
            allowlists: c
                .policy
                .trusted_zone
                .then(|| canonical(&c.policy.allowlists)),
            feed_files: c
                .feeds
                .iter()
                .filter_map(|f| f.file.as_deref())
                .map(|f| match (f.parent(), f.file_name()) {
                    (Some(dir), Some(name)) => canonical(dir).join(name),
                    _ => f.to_owned(),
                })
                .chain(linked)
                .collect(),
        }
    }

    /// Directories to watch and how.
    fn dirs(&self) -> Vec<(PathBuf, RecursiveMode)> {
        let mut out: Vec<(PathBuf, RecursiveMode)> = Vec::new();
        let mut add = |d: PathBuf, mode| {
            if d.is_dir() && !out.iter().any(|(o, _)| *o == d) {
                out.push((d, mode));
            }
        };
        if let Some(a) = &self.allowlists {
            add(a.clone(), RecursiveMode::Recursive); // services/ is a subdirectory
        }
        if let Some(p) = &self.policy_dir {
            add(p.clone(), RecursiveMode::NonRecursive);
        }
        for f in &self.feed_files {
            if let Some(dir) = f.parent() {
                add(dir.to_owned(), RecursiveMode::NonRecursive);
            }
        }
        out
    }

    /// True when a change at `path` can change the policy.
    pub fn matters(&self, path: &Path) -> bool {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return false;
        };
        let name = name.to_string_lossy();
        let dir = canonical(dir);
        if self.feed_files.iter().any(|f| {
            f.parent() == Some(dir.as_path()) && f.file_name() == Some(name.as_ref().as_ref())
        }) {
            return true;
        }
        if self.policy_dir.as_deref() == Some(dir.as_path()) && is_policy_file(&name) {
            return true;
        }
        self.allowlists.as_deref().is_some_and(|a| {
            dir.starts_with(a) && name.ends_with(".yaml") && !name.starts_with('.')
        })
    }

    /// True when `path` (a file cleanpipe writes, such as the state database) sits in a watched
    /// directory. Harmless since only policy files count, but worth a warning: a state file
    /// named like a policy file would be read as one.
    pub fn watches_dir_of(&self, path: &Path) -> bool {
        let Some(dir) = path.parent() else {
            return false;
        };
        let dir = canonical(dir);
        self.dirs().iter().any(|(d, mode)| match mode {
            RecursiveMode::Recursive => dir.starts_with(d),
            _ => dir == *d,
        })
    }
}

/// Configuration warnings about watching: cleanpipe's own files inside watched directories.
pub fn warnings(c: &Config) -> Vec<String> {
    let mut w = Vec::new();
    if WatchSet::from_config(c).watches_dir_of(&c.state.path) {
        w.push(format!(
            "state.path {} is inside a directory watched for policy changes: keep cleanpipe's own files apart from the policy (only policy files trigger reloads, but a state file named like one would be read as policy)",
            c.state.path.display()
        ));
    }
    w
}

/// Starts watching `set`; reloads `store` after each burst of changes that matter.
pub fn watch(
    store: Arc<PolicyStore>,
    set: WatchSet,
    debounce: Duration,
) -> Result<PolicyWatcher, WatchError> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let dirs = set.dirs();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event
            && !e.kind.is_access()
            && e.paths.iter().any(|p| set.matters(p))
        {
            let _ = tx.send(());
        }
    })
    .map_err(|source| WatchError {
        path: PathBuf::new(),
        source,
    })?;
    for (dir, mode) in &dirs {
        watcher.watch(dir, *mode).map_err(|source| WatchError {
            path: dir.clone(),
            source,
        })?;
    }
    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: wait until no event arrived for `debounce`.
            loop {
                match tokio::time::timeout(debounce, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let store = store.clone();
            let _ = tokio::task::spawn_blocking(move || store.reload()).await;
        }
    });
    Ok(PolicyWatcher {
        _watcher: watcher,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_policy_sources_matter() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let policy = tmp.path().join("policy");
        let allow = tmp.path().join("allowlists");
        std::fs::create_dir_all(policy.join("sub")).expect("dirs");
        std::fs::create_dir_all(allow.join("services")).expect("dirs");
        let text = format!(
            "policy:\n  dir: {}\n  allowlists: {}\nfeeds:\n  - name: f\n    file: {}/botnet.rpz\n",
            policy.display(),
            allow.display(),
            policy.display()
        );
        let c = Config::from_str_in(&text, "c.yaml", tmp.path()).expect("config");
        let set = WatchSet::from_config(&c);
        for yes in [
            policy.join("infected.csv"),
            policy.join("mode.yaml"),
            policy.join("botnet.rpz"),
            allow.join("services/mail.yaml"),
            allow.join("profiles.yaml"),
        ] {
            assert!(set.matters(&yes), "{}", yes.display());
        }
        for no in [
            policy.join("state.sqlite"),
            policy.join("state.sqlite-wal"),
            policy.join("state.sqlite-shm"),
            policy.join(".infected.csv.swp"),
            policy.join("other.rpz"),
            policy.join("sub/infected.csv"),
            allow.join("README.md"),
        ] {
            assert!(!set.matters(&no), "{}", no.display());
        }
        assert!(set.watches_dir_of(&policy.join("state.sqlite")));
        assert!(!set.watches_dir_of(&tmp.path().join("state.sqlite")));
    }
}
