//! `pingora-floor --http ADDR --https ADDR --cert PEM --key PEM --upstream ADDR`
//!
//! A `ProxyHttp` that implements only `upstream_peer` (one fixed peer),
//! with Pingora's defaults otherwise (upstream keep-alive pool included),
//! run with the same server settings as Portico: one single-threaded
//! runtime per available core (`work_stealing: false`), h2c on the clear
//! listener, h2 by ALPN on TLS. What Portico costs beyond this is its own.

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Floor {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

struct Args {
    http: String,
    https: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    upstream: SocketAddr,
}

fn args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut http, mut https, mut cert, mut key, mut upstream) = (None, None, None, None, None);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--http" => http = Some(value),
            "--https" => https = Some(value),
            "--cert" => cert = Some(value),
            "--key" => key = Some(value),
            "--upstream" => {
                upstream = Some(
                    value
                        .parse()
                        .map_err(|e| format!("--upstream {value}: {e}"))?,
                )
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Args {
        http: http.ok_or("--http is required")?,
        https,
        cert,
        key,
        upstream: upstream.ok_or("--upstream is required")?,
    })
}

fn main() {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pingora-floor: {e}\nusage: pingora-floor --http ADDR [--https ADDR --cert PEM --key PEM] --upstream ADDR");
            std::process::exit(2);
        }
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let conf = ServerConf {
        threads,
        work_stealing: false,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut svc = pingora::proxy::http_proxy_service(
        &server.configuration,
        Floor {
            upstream: args.upstream,
        },
    );
    if let Some(app) = svc.app_logic_mut() {
        let mut opts = pingora::apps::HttpServerOptions::default();
        opts.h2c = true;
        app.server_options = Some(opts);
    }
    svc.add_tcp(&args.http);
    if let (Some(addr), Some(cert), Some(key)) = (&args.https, &args.cert, &args.key) {
        let mut tls = TlsSettings::intermediate(cert, key).expect("TLS settings");
        tls.enable_h2();
        svc.add_tls_with_settings(addr, None, tls);
    }
    server.add_service(svc);
    server.run_forever();
}
