//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `/config`,
//! `/explain?host=&path=&port=`.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use metrics_exporter_prometheus::PrometheusHandle;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::explain;
use portico_model::publish::Publisher;

pub struct Admin {
    pub publisher: Arc<Publisher>,
    pub metrics: PrometheusHandle,
    /// The L7 listeners, for explain.
    pub l7_listeners: Vec<(&'static str, std::net::SocketAddr)>,
    /// The loaded plugins, for explain.
    pub plugins: portico_wasm::reload::RegistryHandle,
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(body)
        .expect("static response parts are valid")
}

/// Decodes `a=b&c=d` with `%XX` and `+` escapes.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let path = req.uri.path().to_string();
        let query = req.uri.query().unwrap_or("").to_string();
        if req.method != http::Method::GET && req.method != http::Method::HEAD {
            return reply(405, "text/plain", b"only GET\n".to_vec());
        }
        match path.as_str() {
            "/healthz" => reply(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                if portico_dataplane::shutdown::draining() {
                    reply(503, "text/plain", b"draining: shutting down\n".to_vec())
                } else if self.publisher.is_ready() {
                    reply(200, "text/plain", b"ready\n".to_vec())
                } else {
                    reply(
                        503,
                        "text/plain",
                        b"waiting for the first configuration sync\n".to_vec(),
                    )
                }
            }
            "/metrics" => reply(
                200,
                "text/plain; version=0.0.4",
                self.metrics.render().into_bytes(),
            ),
            "/config" => {
                let snap = self.publisher.current();
                let mut config = explain::snapshot_json(&snap);
                config["announce"] =
                    serde_json::to_value(portico_announce::status::status()).unwrap_or_default();
                let body = serde_json::to_vec_pretty(&config).unwrap_or_default();
                reply(200, "application/json", body)
            }
            "/explain" => {
                let Some(host) = query_param(&query, "host") else {
                    return reply(400, "text/plain", b"explain needs ?host=\n".to_vec());
                };
                let path = query_param(&query, "path").unwrap_or_else(|| "/".into());
                let port = match query_param(&query, "port").map(|p| p.parse::<u16>()) {
                    None => None,
                    Some(Ok(p)) => Some(p),
                    Some(Err(_)) => {
                        return reply(400, "text/plain", b"port must be a number\n".to_vec())
                    }
                };
                let snap = self.publisher.current();
                let registry = self.plugins.load();
                let names = |ps: &[std::sync::Arc<portico_wasm::registry::Plugin>]| {
                    ps.iter().map(|p| p.name.clone()).collect()
                };
                let listener_plugins = explain::ListenerPlugins {
                    http: names(&registry.http),
                    tcp: names(&registry.tcp),
                };
                let mut v = explain::explain(
                    &snap,
                    &host,
                    &path,
                    port,
                    &self.l7_listeners,
                    &listener_plugins,
                );
                explain::add_announcements(
                    &mut v,
                    &snap,
                    port,
                    &portico_announce::status::status(),
                );
                reply(
                    200,
                    "application/json",
                    serde_json::to_vec_pretty(&v).unwrap_or_default(),
                )
            }
            _ => reply(
                404,
                "text/plain",
                b"admin endpoints: /healthz /readyz /metrics /config /explain?host=&path=&port=\n"
                    .to_vec(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        assert_eq!(
            query_param("host=a.b&path=%2Ffoo%20bar", "path").as_deref(),
            Some("/foo bar")
        );
        assert_eq!(
            query_param("host=a.b&path=/x", "host").as_deref(),
            Some("a.b")
        );
        assert_eq!(query_param("host=a+b", "host").as_deref(), Some("a b"));
        assert_eq!(query_param("x=%zz", "x").as_deref(), Some("%zz"));
        assert_eq!(query_param("x=%", "x").as_deref(), Some("%"));
        assert_eq!(query_param("host=a", "path"), None);
    }
}
