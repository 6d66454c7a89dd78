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

/// Builds the response to one query (hickory-proto reads and writes the
/// messages), or None for what is not a query.
fn answer(q: &[u8], records: &Records) -> Option<Vec<u8>> {
    use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
    use hickory_proto::rr::{rdata::A, RData, Record, RecordType};
    use hickory_proto::serialize::binary::{BinDecodable, BinEncodable};
    let query = Message::from_bytes(q).ok()?;
    if query.message_type() != MessageType::Query || query.queries().len() != 1 {
        return None;
    }
    let question = &query.queries()[0];
    let name = question.name().to_ascii();
    let found = records.get(&name.trim_end_matches('.').to_ascii_lowercase());
    let mut out = Message::new();
    out.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_authoritative(true)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(match found {
            Some(_) => ResponseCode::NoError,
            None => ResponseCode::NXDomain,
        });
    out.add_query(question.clone());
    if let (Some((addrs, ttl)), RecordType::A) = (found, question.query_type()) {
        for addr in addrs {
            out.add_answer(Record::from_rdata(
                question.name().clone(),
                *ttl,
                RData::A(A(*addr)),
            ));
        }
    }
    out.to_bytes().ok()
}
