//! Reload on change: a notify watcher on the policy and allowlists directories, debounced.
//!
//! Directories are watched, not files, so editors and configuration management that replace a
//! file by renaming a new one over it are seen like any other write. Events are coalesced until
//! the directory has been quiet for `policy.reload_debounce_ms`, then one reload runs on a
//! blocking thread. A half-written file simply fails validation and the old policy stays; the
//! final write triggers another reload.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

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

/// Starts watching `dirs` (missing ones are skipped); reloads `store` after each burst of changes.
pub fn watch(
    store: Arc<PolicyStore>,
    dirs: &[PathBuf],
    debounce: Duration,
) -> Result<PolicyWatcher, WatchError> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event
            && !e.kind.is_access()
        {
            let _ = tx.send(());
        }
    })
    .map_err(|source| WatchError {
        path: PathBuf::new(),
        source,
    })?;
    for dir in dirs.iter().filter(|d| d.is_dir()) {
        watcher
            .watch(dir, RecursiveMode::Recursive)
            .map_err(|source| WatchError {
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
