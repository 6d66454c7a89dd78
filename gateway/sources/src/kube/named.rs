//! Watches of single objects by name, for `kubernetes.secrets =
//! "referenced"`: one watch per TLS Secret that an admitted Ingress names,
//! started and stopped as translation's `referenced_secrets` changes.
//!
//! Why by name: RBAC can grant `list`/`watch` on named objects
//! (`resourceNames`) only to requests with a `metadata.name` field
//! selector, so the ServiceAccount needs no access to any other Secret.
//!
//! This module only keeps the book: which names are watched, which have
//! answered, which failed and why. Starting a watch is the caller's
//! closure, so the book is tested without an API server.

use std::collections::{BTreeMap, BTreeSet};

use portico_model::problems::Problem;
use portico_model::store::ObjectKey;
use tokio::task::AbortHandle;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Started; no list answer and no failure yet.
    Pending,
    Listed,
    /// The first failure since the last list (later ones repeat it).
    Failed(String),
}

struct Watch {
    task: Option<AbortHandle>,
    state: State,
}

/// The named watches of one kind.
#[derive(Default)]
pub struct NamedWatches {
    kind: &'static str,
    watches: BTreeMap<ObjectKey, Watch>,
}

impl NamedWatches {
    pub fn new(kind: &'static str) -> Self {
        NamedWatches {
            kind,
            watches: BTreeMap::new(),
        }
    }

    /// Starts a watch for each wanted name not yet watched and stops the
    /// watches of names no longer wanted; returns the stopped names, whose
    /// objects the caller drops from the store.
    pub fn follow(
        &mut self,
        wanted: &BTreeSet<ObjectKey>,
        mut start: impl FnMut(&ObjectKey) -> Option<AbortHandle>,
    ) -> Vec<ObjectKey> {
        let stopped: Vec<ObjectKey> = self
            .watches
            .keys()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect();
        for k in &stopped {
            if let Some(w) = self.watches.remove(k) {
                if let Some(t) = w.task {
                    t.abort();
                }
            }
        }
        for k in wanted {
            if !self.watches.contains_key(k) {
                let task = start(k);
                self.watches.insert(
                    k.clone(),
                    Watch {
                        task,
                        state: State::Pending,
                    },
                );
            }
        }
        metrics::gauge!("portico_kubernetes_named_watches", "kind" => self.kind)
            .set(self.watches.len() as f64);
        stopped
    }

    pub fn watches(&self, key: &ObjectKey) -> bool {
        self.watches.contains_key(key)
    }

    /// The watch of `key` answered with a list. Returns whether it was
    /// waited for or had failed (so the caller translates again even if
    /// the store did not change), or `None` when `key` is not watched (a
    /// late report of a stopped watch: to be dropped).
    pub fn listed(&mut self, key: &ObjectKey) -> Option<bool> {
        let w = self.watches.get_mut(key)?;
        let changed = w.state != State::Listed;
        w.state = State::Listed;
        Some(changed)
    }

    /// The watch of `key` failed before its first answer; `None` when
    /// `key` is not watched or had answered already (a watch that listed
    /// keeps its object through later errors and relists, as the kind-wide
    /// watches do, and its failure is logged by the watcher).
    pub fn failed(&mut self, key: &ObjectKey, why: String) -> Option<()> {
        let w = self.watches.get_mut(key)?;
        if w.state == State::Listed {
            return None;
        }
        w.state = State::Failed(why);
        Some(())
    }

    /// True when no watch is still waiting for its first answer: until
    /// then a snapshot would serve the default certificate for a host
    /// whose Secret is only slow to arrive.
    pub fn settled(&self) -> bool {
        self.watches.values().all(|w| w.state != State::Pending)
    }

    /// One error per failing watch, on the object it names.
    pub fn problems(&self) -> Vec<Problem> {
        self.watches
            .iter()
            .filter_map(|(k, w)| match &w.state {
                State::Failed(why) => Some(Problem::error(
                    format!("{} {k}", self.kind),
                    format!("cannot be read: {why}"),
                )),
                _ => None,
            })
            .collect()
    }
}

impl Drop for NamedWatches {
    fn drop(&mut self) {
        for w in self.watches.values() {
            if let Some(t) = &w.task {
                t.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(names: &[&str]) -> BTreeSet<ObjectKey> {
        names.iter().map(|n| ObjectKey::new("ns", *n)).collect()
    }

    #[test]
    fn follows_the_wanted_names_and_settles_on_answers() {
        let mut w = NamedWatches::new("Secret");
        let mut started = Vec::new();
        let mut start = |k: &ObjectKey| {
            started.push(k.name.clone());
            None
        };
        assert!(w.follow(&keys(&["a", "b"]), &mut start).is_empty());
        assert!(!w.settled());
        assert_eq!(w.listed(&ObjectKey::new("ns", "a")), Some(true));
        assert!(!w.settled(), "b has not answered");
        w.failed(&ObjectKey::new("ns", "b"), "forbidden".into());
        assert!(w.settled(), "a failure is an answer");
        // A watch that has listed is not marked failed by a later error
        // (a 410 before a relist, an outage).
        assert!(w
            .failed(&ObjectKey::new("ns", "a"), "gone".into())
            .is_none());
        let problems = w.problems();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].to_string().contains("Secret ns/b"),
            "{}",
            problems[0]
        );
        assert!(problems[0].to_string().contains("forbidden"));
        // A later list ends the failure.
        assert_eq!(w.listed(&ObjectKey::new("ns", "b")), Some(true));
        assert_eq!(w.listed(&ObjectKey::new("ns", "b")), Some(false));
        assert!(w.problems().is_empty());

        // b no longer wanted, c new: b stopped, c started, nothing restarted.
        let stopped = w.follow(&keys(&["a", "c"]), &mut start);
        assert_eq!(stopped, vec![ObjectKey::new("ns", "b")]);
        assert_eq!(started, ["a", "b", "c"]);
        assert!(!w.settled());
        // A late answer of the stopped watch is not taken.
        assert_eq!(w.listed(&ObjectKey::new("ns", "b")), None);
        assert!(w.failed(&ObjectKey::new("ns", "b"), "x".into()).is_none());
        assert!(w.watches(&ObjectKey::new("ns", "c")));
    }

    #[tokio::test]
    async fn stopping_a_watch_aborts_its_task() {
        let mut w = NamedWatches::new("Secret");
        let task = tokio::spawn(std::future::pending::<()>());
        let handle = task.abort_handle();
        let mut once = Some(handle);
        w.follow(&keys(&["a"]), |_| once.take());
        w.follow(&keys(&[]), |_| None);
        assert!(task.await.unwrap_err().is_cancelled());
    }
}
