//! An HTTP/1.1 backend that records what reaches it byte for byte.
//!
//! `portico echo` parses requests (and lowercases names) before it answers;
//! tests about the wire itself (header name case, what a request-smuggling
//! attempt lets through to a backend, whether a connection is reused) need
//! the raw bytes of every request on every connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// One request as received: its connection's number (in accept order),
/// the head as sent (request line and headers, CRLFs included) and its
/// body (by Content-Length; chunked bodies are read up to the last chunk).
#[derive(Debug, Clone)]
pub struct RawRequest {
    pub connection: usize,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawRequest {
    /// The value of the first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

pub struct RawBackend {
    pub port: u16,
    seen: Arc<Mutex<Vec<RawRequest>>>,
}

impl RawBackend {
    /// Listens on 127.0.0.1 and answers every request `200 ok` with
    /// keep-alive, recording it first.
    pub fn start() -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                let Ok(conn) = conn else { continue };
                let record = record.clone();
                std::thread::spawn(move || serve(n, conn, &record));
            }
        });
        RawBackend { port, seen }
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RawRequest> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(connection: usize, conn: TcpStream, record: &Mutex<Vec<RawRequest>>) {
    let mut out = conn.try_clone().expect("clone stream");
    let mut reader = BufReader::new(conn);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            head.push_str(&line);
            if line == "\r\n" || line == "\n" {
                break;
            }
        }
        let mut req = RawRequest {
            connection,
            head,
            body: Vec::new(),
        };
        if let Some(len) = req.header("content-length").and_then(|v| v.parse().ok()) {
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            req.body = body;
        } else if req
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let mut size = String::new();
                if reader.read_line(&mut size).unwrap_or(0) == 0 {
                    return;
                }
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                    .unwrap_or(0);
                let mut chunk = vec![0; n + 2];
                if reader.read_exact(&mut chunk).is_err() {
                    return;
                }
                req.body.extend_from_slice(&chunk[..n]);
                if n == 0 {
                    break;
                }
            }
        }
        record.lock().unwrap().push(req);
        if out
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
    }
}
