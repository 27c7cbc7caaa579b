//! Prometheus metrics, served at `/metrics` in the text exposition format.

use std::collections::HashMap;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of HTTP request counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The deployment.
    pub deployment: String,
    /// The route (`query`, `mutation`, `sync`, `deploy`, …).
    pub endpoint: String,
    /// The HTTP status.
    pub status: u16,
}

/// Labels of function call counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// The deployment.
    pub deployment: String,
    /// `query`, `mutation` or `action`.
    pub kind: String,
    /// `ok` or the error code.
    pub outcome: String,
}

/// Per-deployment labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeploymentLabels {
    /// The deployment.
    pub deployment: String,
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by route and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Function calls by kind and outcome.
    pub calls: Family<CallLabels, Counter>,
    /// Fuel consumed by function calls.
    pub fuel: Family<DeploymentLabels, Counter>,
    /// Commits made durable.
    pub commits: Family<DeploymentLabels, Counter>,
    /// Commits refused for conflicts.
    pub conflicts: Family<DeploymentLabels, Counter>,
    /// Distinct subscribed queries.
    pub subscriptions: Family<DeploymentLabels, Gauge>,
    /// Open WebSocket connections.
    pub connections: Family<DeploymentLabels, Gauge>,
    /// Bytes the search indexes take on disk.
    pub search_disk_bytes: Family<DeploymentLabels, Gauge>,
    /// Bytes the search indexes' recent writes take in memory.
    pub search_memory_bytes: Family<DeploymentLabels, Gauge>,
    /// Bytes the vector indexes' graphs take in memory.
    pub vector_memory_bytes: Family<DeploymentLabels, Gauge>,
    /// Store counters seen at the last scrape (counters only move forward by the difference).
    seen: Mutex<HashMap<String, (u64, u64)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kiln");
        let m = Metrics {
            requests: Family::default(),
            calls: Family::default(),
            fuel: Family::default(),
            commits: Family::default(),
            conflicts: Family::default(),
            subscriptions: Family::default(),
            connections: Family::default(),
            search_disk_bytes: Family::default(),
            search_memory_bytes: Family::default(),
            vector_memory_bytes: Family::default(),
            seen: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register("http_requests", "HTTP requests by route and status", m.requests.clone());
        registry.register("function_calls", "Function calls by kind and outcome", m.calls.clone());
        registry.register("fuel_consumed", "Fuel consumed by function calls", m.fuel.clone());
        registry.register("commits", "Transactions committed", m.commits.clone());
        registry.register("conflicts", "Commits refused for conflicts", m.conflicts.clone());
        registry.register("subscriptions", "Distinct subscribed queries", m.subscriptions.clone());
        registry.register("connections", "Open WebSocket connections", m.connections.clone());
        registry.register("search_index_disk_bytes", "Bytes search indexes take on disk", m.search_disk_bytes.clone());
        registry.register(
            "search_index_memory_bytes",
            "Bytes of recent writes search indexes hold in memory",
            m.search_memory_bytes.clone(),
        );
        registry.register(
            "vector_index_memory_bytes",
            "Bytes vector indexes' graphs take in memory",
            m.vector_memory_bytes.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts a request.
    pub fn request(&self, deployment: &str, endpoint: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels { deployment: deployment.to_owned(), endpoint: endpoint.to_owned(), status })
            .inc();
    }

    /// Counts a function call and its fuel.
    pub fn call(&self, deployment: &str, kind: &str, outcome: &str, fuel: u64) {
        self.calls
            .get_or_create(&CallLabels {
                deployment: deployment.to_owned(),
                kind: kind.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.fuel.get_or_create(&DeploymentLabels { deployment: deployment.to_owned() }).inc_by(fuel);
    }

    /// Brings the store counters of a deployment up to date.
    pub fn store_stats(&self, deployment: &str, stats: &kiln_store::StoreStats, subscriptions: usize) {
        let (commits, conflicts) = (stats.commits, stats.conflicts);
        let labels = DeploymentLabels { deployment: deployment.to_owned() };
        self.search_disk_bytes.get_or_create(&labels).set(stats.search_disk_bytes as i64);
        self.search_memory_bytes.get_or_create(&labels).set(stats.search_memory_bytes as i64);
        self.vector_memory_bytes.get_or_create(&labels).set(stats.vector_memory_bytes as i64);
        let mut seen = self.seen.lock();
        let last = seen.entry(deployment.to_owned()).or_default();
        self.commits.get_or_create(&labels).inc_by(commits.saturating_sub(last.0));
        self.conflicts.get_or_create(&labels).inc_by(conflicts.saturating_sub(last.1));
        *last = (commits.max(last.0), conflicts.max(last.1));
        self.subscriptions.get_or_create(&labels).set(subscriptions as i64);
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
