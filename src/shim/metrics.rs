//! What an operator counts: the shim's Prometheus metrics, served as text
//! at `/metrics` (prometheus-client's registry and encoder).
//!
//! | metric | kind | what |
//! |---|---|---|
//! | `nixery_builds_started_total` | counter | nix-builds started |
//! | `nixery_builds_failed_total` | counter | images whose build failed |
//! | `nixery_build_duration_seconds` | histogram | from nix-build to stored manifests |
//! | `nixery_builds_running` | gauge | nix-builds running now |
//! | `nixery_builds_running_peak` | gauge | the most nix-builds that ran at once, since the start |
//! | `nixery_builds_queued` | gauge | builds waiting for a slot (`NIXERY_MAX_BUILDS`) |
//! | `nixery_builds_refused_total` | counter | builds refused with 429 because the queue was full (`NIXERY_MAX_QUEUED_BUILDS`) |
//! | `nixery_auth_password_checks_total` | counter | bcrypt checks of a password (unknown users too, against a stand-in hash) |
//! | `nixery_auth_refused_total{reason}` | counter | requests refused: `credentials` (401), `rate` (429: too many failures from the client) |
//! | `nixery_tag_lookups_total` | counter | package source tag listings run (`git ls-remote`) |
//! | `nixery_connections_open` | gauge | client connections open |
//! | `nixery_connections_closed_total{reason}` | counter | connections the shim closed: `idle`, `write_stalled`, `first_byte` |
//! | `nixery_event_streams_open` | gauge | start-page event streams open (`/events`) |
//! | `nixery_blobs_corrupt_total` | counter | stored blobs found not to hold their digest's bytes (removed and built again) |
//! | `nixery_manifest_cache_total{result}` | counter | image lookups: `warm` (memory), `stored` (storage), `built`, `failed`, `failed_cached` (a remembered failure) |
//! | `nixery_layers_total{result}` | counter | layers of built images: `reused` (layer cache), `packed` |
//! | `nixery_served_bytes_total` | counter | blob and manifest bytes sent to clients |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A `result` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// The outcome.
    pub result: &'static str,
}

/// A `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: &'static str,
}

/// The shim's metrics.
pub struct Metrics {
    registry: Registry,
    /// nix-builds started.
    pub builds_started: Counter,
    /// Images whose build failed.
    pub builds_failed: Counter,
    /// Build durations, in seconds.
    pub build_duration: Histogram,
    /// nix-builds running.
    pub builds_running: Gauge,
    /// The most nix-builds that ran at once.
    pub builds_running_peak: Gauge,
    /// Builds waiting for a slot.
    pub builds_queued: Gauge,
    /// Builds refused because the queue was full.
    pub builds_refused: Counter,
    /// bcrypt checks of a password.
    pub auth_password_checks: Counter,
    /// Requests refused for their credentials or their client's failures.
    pub auth_refused: Family<ReasonLabel, Counter>,
    /// Tag listings of the package source.
    pub tag_lookups: Counter,
    /// Client connections open.
    pub connections_open: Gauge,
    /// Connections the shim closed, by reason.
    pub connections_closed: Family<ReasonLabel, Counter>,
    /// Event streams open.
    pub event_streams_open: Gauge,
    /// Stored blobs found corrupt.
    pub blobs_corrupt: Counter,
    peak: std::sync::Mutex<i64>,
    /// Image lookups by outcome.
    pub manifest_cache: Family<ResultLabel, Counter>,
    /// Layers of built images by outcome.
    pub layers: Family<ResultLabel, Counter>,
    /// Bytes sent to clients.
    pub served_bytes: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("nixery");
        let m = Metrics {
            builds_started: Counter::default(),
            builds_failed: Counter::default(),
            // 0.25 s to about 17 minutes.
            build_duration: Histogram::new(exponential_buckets(0.25, 2.0, 13)),
            builds_running: Gauge::default(),
            builds_running_peak: Gauge::default(),
            builds_queued: Gauge::default(),
            builds_refused: Counter::default(),
            auth_password_checks: Counter::default(),
            auth_refused: Family::default(),
            tag_lookups: Counter::default(),
            connections_open: Gauge::default(),
            connections_closed: Family::default(),
            event_streams_open: Gauge::default(),
            blobs_corrupt: Counter::default(),
            peak: Default::default(),
            manifest_cache: Family::default(),
            layers: Family::default(),
            served_bytes: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("builds_started", "nix-builds started", m.builds_started.clone());
        registry.register("builds_failed", "images whose build failed", m.builds_failed.clone());
        registry.register("build_duration_seconds", "from nix-build to stored manifests", m.build_duration.clone());
        registry.register("builds_running", "nix-builds running now", m.builds_running.clone());
        registry.register("builds_running_peak", "the most nix-builds that ran at once, since the start", m.builds_running_peak.clone());
        registry.register("builds_queued", "builds waiting for a slot (NIXERY_MAX_BUILDS)", m.builds_queued.clone());
        registry.register("builds_refused", "builds refused because the queue was full (NIXERY_MAX_QUEUED_BUILDS)", m.builds_refused.clone());
        registry.register("auth_password_checks", "bcrypt checks of a password", m.auth_password_checks.clone());
        registry.register("auth_refused", "requests refused: credentials (401), rate (429, too many failures from the client)", m.auth_refused.clone());
        registry.register("tag_lookups", "tag listings of the package source (git ls-remote)", m.tag_lookups.clone());
        registry.register("connections_open", "client connections open", m.connections_open.clone());
        registry.register("connections_closed", "connections the shim closed: idle, write_stalled, first_byte", m.connections_closed.clone());
        registry.register("event_streams_open", "start-page event streams open", m.event_streams_open.clone());
        registry.register("blobs_corrupt", "stored blobs found not to hold their digest's bytes", m.blobs_corrupt.clone());
        registry.register("manifest_cache", "image lookups by outcome: warm, stored, built, failed, failed_cached", m.manifest_cache.clone());
        registry.register("layers", "layers of built images: reused from the layer cache, or packed", m.layers.clone());
        registry.register("served_bytes", "blob and manifest bytes sent to clients", m.served_bytes.clone());
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// A nix-build starts: counted as running, and in the peak.
    pub fn build_running(&self) {
        let now = self.builds_running.inc() + 1;
        let mut peak = self.peak.lock().unwrap_or_else(|e| e.into_inner());
        if now > *peak {
            *peak = now;
            self.builds_running_peak.set(now);
        }
    }

    /// Counts a connection the shim closed.
    pub fn closed(&self, reason: &'static str) {
        self.connections_closed.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts a refused request.
    pub fn refused(&self, reason: &'static str) {
        self.auth_refused.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts an image lookup's outcome.
    pub fn lookup(&self, result: &'static str) {
        self.manifest_cache.get_or_create(&ResultLabel { result }).inc();
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.builds_started.inc();
        m.lookup("warm");
        m.lookup("warm");
        m.build_duration.observe(1.5);
        let text = m.render();
        assert!(text.contains("nixery_builds_started_total 1"), "{text}");
        assert!(text.contains("nixery_manifest_cache_total{result=\"warm\"} 2"), "{text}");
        assert!(text.contains("nixery_build_duration_seconds_count 1"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
