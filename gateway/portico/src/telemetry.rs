//! Logging and the Prometheus recorder.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Pingora's connection pool logs `failed to acquire reusable stream` at
/// ERROR whenever two requests race for one idle upstream connection
/// (hundreds of times a second under keep-alive load), which is neither
/// an error nor actionable; a failed connect is logged and counted by
/// Portico itself. Unless `log.level` says otherwise about it, the
/// connectors' own lines are off.
fn with_quiet_pingora(level: &str) -> String {
    if level.contains("pingora_core::connectors") {
        level.to_string()
    } else {
        format!("{level},pingora_core::connectors=off")
    }
}

/// Installs the tracing subscriber; `RUST_LOG` overrides `log.level`.
/// Logs go to stderr; stdout carries the JSON access log.
pub fn init_logging(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(with_quiet_pingora(&cfg.level)))
        .unwrap_or_else(|_| EnvFilter::new(with_quiet_pingora("info")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Latency buckets from 0.5 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often recorded histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the recorder, and a thread that folds histogram samples into
/// their buckets every few seconds. The recorder keeps every sample until
/// then: without the upkeep, a gateway nobody scrapes would hold one
/// sample per request forever (about 1 MB/s at 40k requests/s).
pub fn init_metrics() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            upkeep.run_upkeep();
        })
        .map_err(|e| format!("cannot start the metrics upkeep thread: {e}"))?;
    Ok(handle)
}

/// Registers descriptions so `/metrics` documents itself.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "portico_http_requests_total",
        "HTTP requests by listener, route (Ingress) and status class"
    );
    describe_histogram!(
        "portico_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by listener and route"
    );
    describe_gauge!("portico_http_requests_active", "HTTP requests in flight");
    describe_counter!(
        "portico_mirror_requests_total",
        "Gateway API RequestMirror copies by mirror backend and result (sent, failed, timeout, dropped, no_endpoint)"
    );
    describe_gauge!(
        "portico_announced_addresses",
        "Addresses this node announces (accepted locally and answered or advertised), by mode"
    );
    describe_gauge!(
        "portico_announce_ready",
        "1 while the node is ready and its addresses are announced, 0 while they are held back"
    );
    describe_gauge!(
        "portico_announce_owned_addresses",
        "L2 mode with Leases: the addresses this node holds the Lease of and answers for"
    );
    describe_counter!(
        "portico_announce_failovers_total",
        "L2 mode with Leases: addresses this node took over from another edge node"
    );
    describe_counter!(
        "portico_announce_lease_errors_total",
        "L2 mode with Leases: failed reads and renewals of the address Leases"
    );
    describe_counter!(
        "portico_arp_sent_total",
        "ARP packets sent for announced IPv4 addresses: replies and gratuitous"
    );
    describe_counter!(
        "portico_ndp_sent_total",
        "Neighbor advertisements sent for announced IPv6 addresses: replies and unsolicited"
    );
    describe_gauge!(
        "portico_bgp_session_established",
        "1 while the BGP session with the peer is established"
    );
    describe_gauge!(
        "portico_bgp_prefixes_advertised",
        "Routes (/32s) advertised to the BGP peer"
    );
    describe_counter!(
        "portico_http_paths_normalized_total",
        "Request paths rewritten to their normal form before routing"
    );
    describe_counter!(
        "portico_http_paths_refused_total",
        "Requests answered 400 because their path has no single meaning, by reason"
    );
    describe_counter!(
        "portico_http_bytes_received_total",
        Unit::Bytes,
        "HTTP request body bytes received from clients"
    );
    describe_counter!(
        "portico_http_bytes_sent_total",
        Unit::Bytes,
        "HTTP response body bytes sent to clients"
    );
    describe_counter!(
        "portico_http_fast_path_requests_total",
        "HTTP requests served on a fast path (without Pingora's per-request pipeline), by protocol"
    );
    describe_counter!(
        "portico_upstream_connect_errors_total",
        "Failed connects to endpoints, by backend"
    );
    describe_counter!(
        "portico_tls_handshakes_total",
        "TLS certificate selections by source (sni or default)"
    );
    describe_counter!(
        "portico_tls_default_certificate_total",
        "Handshakes that fell back to the default certificate, by reason"
    );
    describe_counter!(
        "portico_l4_connections_total",
        "Accepted L4 TCP connections by listener"
    );
    describe_counter!(
        "portico_l4_connections_failed_total",
        "L4 TCP connections closed because no endpoint accepted them"
    );
    describe_gauge!(
        "portico_l4_connections_active",
        "Open L4 TCP connections by listener"
    );
    describe_counter!(
        "portico_l4_bytes_received_total",
        Unit::Bytes,
        "L4 bytes received from clients"
    );
    describe_counter!(
        "portico_l4_bytes_sent_total",
        Unit::Bytes,
        "L4 bytes sent to clients"
    );
    describe_gauge!("portico_udp_flows_active", "Active UDP flows by listener");
    describe_counter!("portico_udp_flows_total", "UDP flows opened by listener");
    describe_gauge!("portico_l4_listeners_open", "L4 listeners currently bound");
    describe_counter!(
        "portico_l4_bind_errors_total",
        "L4 listeners that could not be bound"
    );
    describe_gauge!(
        "portico_snapshot_generation",
        "Generation of the active snapshot"
    );
    describe_gauge!(
        "portico_snapshot_last_apply_timestamp_seconds",
        Unit::Seconds,
        "Unix time of the last snapshot swap"
    );
    describe_histogram!(
        "portico_snapshot_publish_duration_seconds",
        Unit::Seconds,
        "Time to build and swap a snapshot"
    );
    describe_counter!(
        "portico_config_problems_total",
        "Problems found in manifests and objects, by severity"
    );
    describe_counter!(
        "portico_manifest_reloads_total",
        "Manifest folder reloads, by result"
    );
    describe_gauge!(
        "portico_backends",
        "Backends (Service ports) in the active snapshot"
    );
    describe_gauge!(
        "portico_l4_listeners_configured",
        "L4 listeners the active snapshot asks for"
    );
    describe_gauge!(
        "portico_ingresses",
        "Ingresses by state: served, or ignored by ingress.admission"
    );
    describe_counter!(
        "portico_canary_requests_total",
        "Requests a canary Ingress took, by canary Ingress"
    );
    describe_counter!(
        "portico_custom_errors_total",
        "Error responses replaced by a default backend's page (custom-http-errors), by Ingress"
    );
    describe_counter!(
        "portico_rate_limited_total",
        "Requests refused by a route's rate or connection limit, by Ingress and limit"
    );
    describe_counter!(
        "portico_endpoint_cooldowns_total",
        "Endpoints put in cool-down after failures, by backend"
    );
    describe_counter!(
        "portico_dns_lookups_total",
        "ExternalName DNS lookups, by result"
    );
    describe_counter!(
        "portico_callout_connections_total",
        "Connections for plugin HTTP callouts, by whether a pooled one was reused"
    );
    describe_gauge!(
        "portico_kubernetes_objects",
        "Objects of each watched kind in the store, by resource"
    );
    describe_gauge!(
        "portico_kubernetes_named_watches",
        "Objects watched one by one (kubernetes.secrets = \"referenced\"), by kind"
    );
    describe_counter!(
        "portico_kubernetes_watch_errors_total",
        "Kubernetes list/watch failures, by resource"
    );
    describe_gauge!(
        "portico_kubernetes_leader",
        "1 while this process holds the Lease and writes status, else 0"
    );
    describe_counter!(
        "portico_kubernetes_status_writes_total",
        "status.loadBalancer writes to Ingresses and Services, by kind and result"
    );
    describe_counter!(
        "portico_kubernetes_events_total",
        "Kubernetes Events recorded, by reason"
    );
    describe_histogram!(
        "portico_store_build_duration_seconds",
        Unit::Seconds,
        "Time to build the object store from the sources"
    );
    describe_histogram!(
        "portico_translate_duration_seconds",
        Unit::Seconds,
        "Time to translate the store into a snapshot"
    );
    describe_counter!(
        "portico_plugin_calls_total",
        "Calls into plugins, by plugin and result"
    );
    describe_histogram!(
        "portico_plugin_call_duration_seconds",
        Unit::Seconds,
        "Time of sampled calls into plugins, by plugin"
    );
    describe_counter!(
        "portico_plugin_circuit_opened_total",
        "Times a failing plugin's circuit opened (fail policy applied without calling it), by plugin"
    );
    describe_counter!(
        "portico_plugin_failures_total",
        "Plugin failures (trap, deadline, memory), by plugin and kind"
    );
    describe_counter!(
        "portico_plugin_instances_started_total",
        "Plugin instances started, by plugin"
    );
    describe_counter!(
        "portico_plugin_reloads_total",
        "Plugin configuration and module reloads, by result"
    );
    describe_counter!(
        "portico_plugin_callouts_total",
        "Plugin HTTP callouts, by plugin and result"
    );
    describe_counter!(
        "portico_plugin_control_errors_total",
        "Control-plane plugin hook errors, by plugin and hook"
    );
    describe_counter!(
        "portico_plugin_compile_cache_total",
        "Plugin module compile-cache lookups, by result"
    );
    describe_counter!(
        "portico_lb_plugin_choices_total",
        "Upstream choices made by plugins, by result"
    );
    describe_gauge!(
        "portico_plugin_metric",
        "A plugin's own counter or gauge (proxy_define_metric), by plugin and name"
    );
    describe_histogram!(
        "portico_plugin_histogram",
        "A plugin's own histogram samples (proxy_define_metric), by plugin and name"
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn pingora_connector_noise_is_off_unless_asked_for() {
        assert_eq!(
            super::with_quiet_pingora("info"),
            "info,pingora_core::connectors=off"
        );
        assert_eq!(
            super::with_quiet_pingora("warn,pingora_core::connectors=debug"),
            "warn,pingora_core::connectors=debug"
        );
    }
}
