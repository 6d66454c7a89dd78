//! `portico-load`: a fixed-rate HTTP/1.1 keep-alive load generator.
//!
//! wrk measures throughput at saturation; tail latency has to be measured
//! at a fixed rate instead, and measured from when each request was *due*,
//! not from when it was sent, so that a stalled server cannot hide its stall
//! by delaying the requests behind it (coordinated omission). A request
//! sent on time is measured from its send.
//!
//! Usage: `portico-load --url http://127.0.0.1:8080/ --rate 20000
//!         --connections 32 --duration 10 [--host example.com]`
//! Prints one JSON line: sent, ok, errors, rps, p50/p90/p99/max in µs.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args {
    addr: String,
    path: String,
    host: String,
    rate: f64,
    connections: usize,
    duration: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut url = None;
    let mut host = None;
    let mut rate = 1000.0;
    let mut connections = 16;
    let mut duration = 5.0;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => url = Some(val()?),
            "--host" => host = Some(val()?),
            "--rate" => rate = val()?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--connections" => {
                connections = val()?.parse().map_err(|e| format!("--connections: {e}"))?
            }
            "--duration" => duration = val()?.parse().map_err(|e| format!("--duration: {e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let url = url.ok_or("--url is required")?;
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let (addr, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if rate <= 0.0 || connections == 0 {
        return Err("--rate and --connections must be positive".into());
    }
    Ok(Args {
        host: host.unwrap_or_else(|| addr.to_string()),
        addr: addr.to_string(),
        path: path.to_string(),
        rate,
        connections,
        duration: Duration::from_secs_f64(duration),
    })
}

/// Reads one response; returns its status. Needs Content-Length.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("response without content-length"))?;
    let mut have = buf.len() - head_end;
    while have < len {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        have += n;
    }
    Ok(status)
}

struct ConnResult {
    latencies_us: Vec<u32>,
    errors: u64,
}

async fn connection(args: std::sync::Arc<Args>, start: Instant, offset: f64) -> ConnResult {
    let per_conn_rate = args.rate / args.connections as f64;
    let interval = 1.0 / per_conn_rate;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: portico-load\r\n\r\n",
        args.path, args.host
    );
    let mut out = ConnResult {
        latencies_us: Vec::new(),
        errors: 0,
    };
    let mut stream: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut i = 0u64;
    loop {
        let due = start + Duration::from_secs_f64(offset * interval + i as f64 * interval);
        if due.duration_since(start) >= args.duration {
            break;
        }
        // Behind schedule (the server was slow): measure from when the
        // request was due. On schedule: sleep, and measure from the send,
        // so the timer's ~1 ms granularity does not count as latency.
        let measure_from = if Instant::now() >= due {
            due
        } else {
            tokio::time::sleep_until(due.into()).await;
            Instant::now()
        };
        i += 1;
        if stream.is_none() {
            match TcpStream::connect(&args.addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    stream = Some(s);
                }
                Err(_) => {
                    out.errors += 1;
                    continue;
                }
            }
        }
        let s = stream.as_mut().expect("connected above");
        let res = async {
            s.write_all(request.as_bytes()).await?;
            read_response(s, &mut buf).await
        }
        .await;
        match res {
            Ok(status) if status < 500 => {
                let us = Instant::now().duration_since(measure_from).as_micros();
                out.latencies_us.push(us.min(u32::MAX as u128) as u32);
            }
            Ok(_) => out.errors += 1,
            Err(_) => {
                out.errors += 1;
                stream = None;
            }
        }
    }
    out
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("portico-load: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let args = std::sync::Arc::new(args);
    let results = rt.block_on(async {
        let start = Instant::now() + Duration::from_millis(50);
        let n = args.connections;
        let tasks: Vec<_> = (0..n)
            .map(|c| tokio::spawn(connection(args.clone(), start, c as f64 / n as f64)))
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            if let Ok(r) = t.await {
                all.push(r);
            }
        }
        all
    });
    let mut lat: Vec<u32> = results
        .iter()
        .flat_map(|r| r.latencies_us.iter().copied())
        .collect();
    let errors: u64 = results.iter().map(|r| r.errors).sum();
    lat.sort_unstable();
    let ok = lat.len() as u64;
    println!(
        "{{\"sent\":{},\"ok\":{},\"errors\":{},\"rps\":{:.1},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"max_us\":{}}}",
        ok + errors,
        ok,
        errors,
        ok as f64 / args.duration.as_secs_f64(),
        percentile(&lat, 0.50),
        percentile(&lat, 0.90),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0)
    );
}
