//! Per-route metric handles, resolved on a route's first request and kept
//! with the route: the per-request cost is then an atomic add, not a
//! registry lookup with label strings built per request.

use std::sync::OnceLock;

use metrics::{Counter, Histogram};

/// The response status classes of `portico_http_requests_total`.
pub const CODE_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];
/// The L7 listener kinds (`listener` label).
pub const LISTENERS: [&str; 2] = ["http", "https"];

/// The class index of a status code in [`CODE_CLASSES`].
pub fn code_class(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        500..=599 => 4,
        _ => 5,
    }
}

/// `portico_http_requests_total` and `portico_http_request_duration_seconds`
/// of one route (label `route`), by listener and class.
#[derive(Default)]
pub struct RouteMetrics {
    requests: [[OnceLock<Counter>; 6]; 2],
    duration: [OnceLock<Histogram>; 2],
}

impl RouteMetrics {
    pub fn requests(&self, route: &str, tls: bool, class: usize) -> &Counter {
        let l = usize::from(tls);
        self.requests[l][class].get_or_init(|| {
            metrics::counter!("portico_http_requests_total",
                "listener" => LISTENERS[l], "route" => route.to_string(), "code_class" => CODE_CLASSES[class])
        })
    }

    pub fn duration(&self, route: &str, tls: bool) -> &Histogram {
        let l = usize::from(tls);
        self.duration[l].get_or_init(|| {
            metrics::histogram!("portico_http_request_duration_seconds",
                "listener" => LISTENERS[l], "route" => route.to_string())
        })
    }
}

// Handles are a cache, not part of what a route is: routes compare and
// clone as if they had none.
impl PartialEq for RouteMetrics {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for RouteMetrics {}

impl Clone for RouteMetrics {
    fn clone(&self) -> Self {
        RouteMetrics::default()
    }
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteMetrics")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        assert_eq!(CODE_CLASSES[code_class(101)], "1xx");
        assert_eq!(CODE_CLASSES[code_class(204)], "2xx");
        assert_eq!(CODE_CLASSES[code_class(308)], "3xx");
        assert_eq!(CODE_CLASSES[code_class(404)], "4xx");
        assert_eq!(CODE_CLASSES[code_class(503)], "5xx");
        assert_eq!(CODE_CLASSES[code_class(0)], "none");
    }

    #[test]
    fn handles_are_kept_and_not_part_of_equality() {
        let m = RouteMetrics::default();
        let a: *const Counter = m.requests("ns/r", false, 1);
        let b: *const Counter = m.requests("ns/r", false, 1);
        assert_eq!(a, b, "resolved once");
        assert_eq!(m.clone(), RouteMetrics::default());
    }
}
