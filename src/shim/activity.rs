//! What the shim is doing, for the start page: builds in progress and the
//! most recent finished ones (with how many layers they reused), with a
//! version that moves on every change, so the page's event stream
//! (`/events`) sends a snapshot whenever something happened. Image names
//! only: no store paths, no host paths.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// How many finished builds are kept.
const RECENT: usize = 20;

/// A build in progress.
#[derive(Debug, Clone, Serialize)]
pub struct Running {
    /// `name:tag`, and the system when the image is one of an index.
    pub image: String,
    /// Seconds since the epoch when it started.
    pub started: u64,
    /// `queued`, `nix-build` or `assembling`.
    pub stage: &'static str,
}

/// A finished build.
#[derive(Debug, Clone, Serialize)]
pub struct Finished {
    /// `name:tag`.
    pub image: String,
    /// Seconds since the epoch when it finished.
    pub at: u64,
    /// How long it took, in milliseconds.
    pub ms: u64,
    /// Whether it gave an image.
    pub ok: bool,
    /// Layers found in the layer cache.
    pub reused: usize,
    /// Layers packed.
    pub packed: usize,
}

/// A snapshot for the page.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Builds in progress, oldest first.
    pub running: Vec<Running>,
    /// Finished builds, newest first.
    pub recent: Vec<Finished>,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    running: BTreeMap<u64, (Running, Option<Instant>)>,
    recent: VecDeque<Finished>,
}

/// Builds in progress and finished.
#[derive(Debug)]
pub struct Activity {
    state: Mutex<State>,
    changed: tokio::sync::watch::Sender<u64>,
    /// Turns for watchers ([`MAX_WATCHERS`]).
    watchers: std::sync::Arc<tokio::sync::Semaphore>,
}

/// How many watchers (the start page's event streams) there may be at
/// once: each holds a connection open, and connections are bounded.
pub const MAX_WATCHERS: usize = 32;

impl Default for Activity {
    fn default() -> Self {
        Activity {
            state: Mutex::new(State::default()),
            changed: tokio::sync::watch::channel(0).0,
            watchers: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_WATCHERS)),
        }
    }
}

/// A watcher of the activity: sees every change; its turn is given back
/// when it is dropped.
#[derive(Debug)]
pub struct Watcher {
    /// The changes.
    pub changes: tokio::sync::watch::Receiver<u64>,
    _turn: tokio::sync::OwnedSemaphorePermit,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A build's entry, finished (as failed, unless [`BuildEntry::finish`]
/// says otherwise) when dropped.
#[derive(Debug)]
pub struct BuildEntry<'a> {
    activity: &'a Activity,
    id: u64,
    done: bool,
}

impl BuildEntry<'_> {
    /// Moves the build to another stage.
    pub fn stage(&self, stage: &'static str) {
        let mut s = self.activity.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((r, started)) = s.running.get_mut(&self.id) {
            r.stage = stage;
            if stage == "nix-build" {
                *started = Some(Instant::now());
            }
        }
        drop(s);
        self.activity.bump();
    }

    /// The build gave an image: `reused` and `packed` layers.
    pub fn finish(mut self, reused: usize, packed: usize) {
        self.done = true;
        self.activity.finish(self.id, true, reused, packed);
    }
}

impl Drop for BuildEntry<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.activity.finish(self.id, false, 0, 0);
        }
    }
}

impl Activity {
    /// Records a build of `image`, queued.
    pub fn start(&self, image: &str) -> BuildEntry<'_> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let id = s.next;
        s.next += 1;
        s.running.insert(id, (Running { image: image.to_string(), started: now(), stage: "queued" }, None));
        drop(s);
        self.bump();
        BuildEntry { activity: self, id, done: false }
    }

    fn finish(&self, id: u64, ok: bool, reused: usize, packed: usize) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((r, started)) = s.running.remove(&id) {
            let ms = started.map(|t| t.elapsed().as_millis() as u64).unwrap_or(0);
            if s.recent.len() == RECENT {
                s.recent.pop_back();
            }
            s.recent.push_front(Finished { image: r.image, at: now(), ms, ok, reused, packed });
        }
        drop(s);
        self.bump();
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// What is going on now.
    pub fn snapshot(&self) -> Snapshot {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Snapshot { running: s.running.values().map(|(r, _)| r.clone()).collect(), recent: s.recent.iter().cloned().collect() }
    }

    /// A watcher that sees every change, unless [`MAX_WATCHERS`] watch
    /// already.
    pub fn watch(&self) -> Option<Watcher> {
        let turn = self.watchers.clone().try_acquire_owned().ok()?;
        Some(Watcher { changes: self.changed.subscribe(), _turn: turn })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_move_from_running_to_recent() {
        let a = Activity::default();
        let mut w = a.watch().unwrap();
        let ok = a.start("hello:latest");
        ok.stage("nix-build");
        let failed = a.start("broken:latest");
        assert_eq!(a.snapshot().running.len(), 2);
        assert_eq!(a.snapshot().running[0].stage, "nix-build");
        ok.finish(3, 2);
        drop(failed);
        let s = a.snapshot();
        assert!(s.running.is_empty());
        assert_eq!((s.recent[0].image.as_str(), s.recent[0].ok), ("broken:latest", false));
        assert_eq!((s.recent[1].reused, s.recent[1].packed, s.recent[1].ok), (3, 2, true));
        assert!(w.changes.has_changed().unwrap());
        assert!(*w.changes.borrow_and_update() >= 5);
    }

    #[test]
    fn watchers_are_bounded_and_give_their_turn_back() {
        let a = Activity::default();
        let watchers: Vec<Watcher> = (0..MAX_WATCHERS).map(|_| a.watch().unwrap()).collect();
        assert!(a.watch().is_none(), "one more than the bound is refused");
        drop(watchers);
        assert!(a.watch().is_some());
    }
}
