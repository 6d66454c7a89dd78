//! A tiny authoritative DNS server on 127.0.0.1 (UDP) for ExternalName
//! tests: A records with a TTL, set and changed by the test; other names
//! get NXDOMAIN, other types an empty answer.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Records = BTreeMap<String, (Vec<Ipv4Addr>, u32)>;

pub struct DnsServer {
    port: u16,
    records: Arc<Mutex<Records>>,
    stop: Arc<AtomicBool>,
}

impl DnsServer {
    pub fn start() -> DnsServer {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind the test DNS server");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let port = sock.local_addr().unwrap().port();
        let records = Arc::new(Mutex::new(Records::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (records.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(answer) = answer(&buf[..n], &r.lock().unwrap()) {
                    let _ = sock.send_to(&answer, from);
                }
            }
        });
        DnsServer {
            port,
            records,
            stop,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Answers `name` with these addresses and TTL from now on.
    pub fn set(&self, name: &str, addrs: &[String], ttl: u32) {
        let addrs = addrs.iter().map(|a| a.parse().expect("IPv4")).collect();
        self.records
            .lock()
            .unwrap()
            .insert(name.to_ascii_lowercase(), (addrs, ttl));
    }

    /// `name` no longer exists (NXDOMAIN).
    pub fn remove(&self, name: &str) {
        self.records
            .lock()
            .unwrap()
            .remove(&name.to_ascii_lowercase());
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Builds the response to one query, or None for what is not a query.
fn answer(q: &[u8], records: &Records) -> Option<Vec<u8>> {
    if q.len() < 12 || q[2] & 0x80 != 0 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    // The question: labels, then type and class.
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question = &q[12..i + 4];
    let name = labels.join(".");
    let found = records.get(&name);
    let answers: Vec<(Ipv4Addr, u32)> = match (found, qtype) {
        (Some((addrs, ttl)), 1) => addrs.iter().map(|a| (*a, *ttl)).collect(),
        _ => Vec::new(),
    };
    let rcode = if found.is_some() { 0 } else { 3 };
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&q[0..2]);
    // QR, AA, RD copied, RA; rcode.
    out.push(0x84 | (q[2] & 0x01));
    out.push(0x80 | rcode);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(question);
    for (addr, ttl) in answers {
        out.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1]);
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&addr.octets());
    }
    Some(out)
}
