//! Leader election with a `coordination.k8s.io/v1` Lease, so that of
//! several replicas exactly one writes status and Events.
//!
//! The usual client-go protocol: the holder renews `renewTime` every third
//! of the lease duration; a candidate takes the Lease over only once
//! `renewTime + leaseDurationSeconds` has passed, and every write carries the
//! resourceVersion it read, so two candidates cannot both win. A leader that
//! cannot renew steps down before its lease could be taken over.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::Client;

/// What a candidate decides from the Lease it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it, or the holder let it expire: take it.
    Acquire,
    /// We hold it: renew.
    Renew,
    /// Someone else holds a live lease.
    Follow(String),
}

/// Pure: who holds `lease` at `now` from `me`'s point of view.
pub fn decide(lease: &Lease, me: &str, now: Timestamp) -> Decision {
    let spec = lease.spec.as_ref();
    let holder = spec
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty());
    let Some(holder) = holder else {
        return Decision::Acquire;
    };
    if holder == me {
        return Decision::Renew;
    }
    let renewed = spec
        .and_then(|s| s.renew_time.as_ref().or(s.acquire_time.as_ref()))
        .map(|t| t.0);
    let duration = spec
        .and_then(|s| s.lease_duration_seconds)
        .unwrap_or(15)
        .max(1);
    match renewed {
        Some(t) if t + SignedDuration::from_secs(duration.into()) > now => {
            Decision::Follow(holder.to_string())
        }
        _ => Decision::Acquire,
    }
}

pub struct Elector {
    api: Api<Lease>,
    name: String,
    pub identity: String,
    duration: Duration,
    /// When our last successful renewal was made.
    renewed_at: Option<Instant>,
    leader: bool,
}

impl Elector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: String,
        duration: Duration,
    ) -> Self {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity,
            duration,
            renewed_at: None,
            leader: false,
        }
    }

    pub fn retry_period(&self) -> Duration {
        self.duration / 3
    }

    pub fn is_leader(&self) -> bool {
        self.leader
    }

    /// One round: read, decide, write. Returns whether we lead now.
    pub async fn tick(&mut self) -> bool {
        let result = self.try_tick().await;
        let lead = match result {
            Ok(lead) => {
                if lead {
                    self.renewed_at = Some(Instant::now());
                }
                lead
            }
            Err(e) => {
                // Keep leading only while our last renewal is surely still
                // valid to everyone else (with a margin for clock skew).
                let still = self.leader
                    && self
                        .renewed_at
                        .is_some_and(|t| t.elapsed() < self.duration * 2 / 3);
                tracing::warn!(lease = %self.name, error = %e, leading = still, "cannot renew the leader Lease");
                still
            }
        };
        if lead != self.leader {
            if lead {
                tracing::info!(lease = %self.name, identity = %self.identity, "became leader: writing status and Events");
            } else {
                tracing::info!(lease = %self.name, identity = %self.identity, "no longer leader: status and Events left to the leader");
            }
            metrics::gauge!("portico_kubernetes_leader").set(if lead { 1.0 } else { 0.0 });
        }
        self.leader = lead;
        lead
    }

    async fn try_tick(&mut self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.is_already_exists() || s.is_conflict() => Ok(false),
                Err(e) => Err(e),
            };
        };
        let (acquire_time, transitions) = match decide(&lease, &self.identity, now) {
            Decision::Follow(holder) => {
                tracing::debug!(%holder, "Lease held by another replica");
                return Ok(false);
            }
            Decision::Renew => {
                let s = lease.spec.as_ref();
                (
                    s.and_then(|s| s.acquire_time.clone()),
                    s.and_then(|s| s.lease_transitions).unwrap_or(0),
                )
            }
            Decision::Acquire => (
                None,
                lease
                    .spec
                    .as_ref()
                    .and_then(|s| s.lease_transitions)
                    .unwrap_or(0)
                    + 1,
            ),
        };
        lease.spec = Some(self.spec(now, acquire_time, transitions));
        // `replace` sends the resourceVersion we read: a concurrent writer
        // makes this fail with 409 Conflict, and we follow.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().max(1) as i32),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// On shutdown: give the Lease up so another replica takes over at once
    /// instead of after the lease duration.
    pub async fn release(&mut self) {
        if !self.leader {
            return;
        }
        self.leader = false;
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        if decide(&lease, &self.identity, Timestamp::now()) != Decision::Renew {
            return;
        }
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.renew_time = None;
        }
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.name, "released the leader Lease"),
            Err(e) => {
                tracing::warn!(lease = %self.name, error = %e, "cannot release the leader Lease")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed_secs_ago: i64, duration: i32) -> Lease {
        let now = Timestamp::now();
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                lease_duration_seconds: Some(duration),
                renew_time: Some(MicroTime(now - SignedDuration::from_secs(renewed_secs_ago))),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn live_lease_of_another_is_followed() {
        let d = decide(&lease(Some("b"), 2, 15), "a", Timestamp::now());
        assert_eq!(d, Decision::Follow("b".into()));
    }

    #[test]
    fn expired_lease_is_taken_over() {
        assert_eq!(
            decide(&lease(Some("b"), 20, 15), "a", Timestamp::now()),
            Decision::Acquire
        );
    }

    #[test]
    fn own_lease_is_renewed_and_free_lease_acquired() {
        assert_eq!(
            decide(&lease(Some("a"), 2, 15), "a", Timestamp::now()),
            Decision::Renew
        );
        assert_eq!(
            decide(&lease(None, 2, 15), "a", Timestamp::now()),
            Decision::Acquire
        );
        assert_eq!(
            decide(&lease(Some(""), 2, 15), "a", Timestamp::now()),
            Decision::Acquire
        );
    }
}
