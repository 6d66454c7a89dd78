//! The request-parsing defence table (README, Security), end to end:
//! hostile HTTP/1.1 requests through the real binary on raw sockets, and
//! hostile HTTP/2 requests (h2c) from python3-h2 with its checks off, with
//! an HTTP/1.1 backend that records the bytes it receives (the h2 → h1
//! downgrade is where h2 smuggling happens).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use portico_integration_tests::raw_backend::RawBackend;
use portico_integration_tests::*;

/// What the client saw: the status of each response on the connection
/// ("closed" once it ends).
fn exchange(port: u16, raw: &[u8]) -> Vec<String> {
    let mut s = TcpStream::connect(addr(port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(raw).unwrap();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        match read_response(&mut s) {
            Ok(r) => statuses.push(r.status.to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                statuses.push("closed".into());
                break;
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                statuses.push("open".into());
                break;
            }
            Err(e) => {
                statuses.push(format!("error {e}"));
                break;
            }
        }
    }
    statuses
}

/// What the backend must have received for a row.
enum Backend {
    /// Nothing at all: the request was refused before any routing.
    Nothing,
    /// Exactly one request, whose head has `has` and lacks `lacks`, with
    /// this body.
    One {
        has: &'static [&'static str],
        lacks: &'static [&'static str],
        body: &'static str,
    },
}

struct Row {
    name: &'static str,
    raw: Vec<u8>,
    /// Statuses the client reads on the connection, then how it ends.
    client: &'static [&'static str],
    backend: Backend,
}

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: t.test\r\n\r\n";

fn row(
    name: &'static str,
    raw: impl Into<Vec<u8>>,
    client: &'static [&'static str],
    backend: Backend,
) -> Row {
    Row {
        name,
        raw: raw.into(),
        client,
        backend,
    }
}

/// Every 400 closes the connection: a client that sent a malformed
/// request may disagree about where it ended.
const REFUSED: &[&str] = &["400", "closed"];
const CHUNKED_ONLY: Backend = Backend::One {
    has: &["Transfer-Encoding: chunked"],
    lacks: &["Content-Length"],
    body: "",
};

/// The table, documented in README (Security, "Request-parsing
/// defences"): keep the two in step.
fn rows() -> Vec<Row> {
    use Backend::*;
    let cl = SMUGGLED.len();
    vec![
        // RFC 9112 §6.1: Transfer-Encoding wins over Content-Length, the
        // length is not forwarded and the client connection is closed
        // after the response, so nothing after the chunked body is read
        // as a request.
        row("CL then TE", format!("POST /a HTTP/1.1\r\nHost: t.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"), &["200", "closed"], CHUNKED_ONLY),
        row("TE then CL", format!("POST /a HTTP/1.1\r\nHost: t.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 50\r\n\r\n0\r\n\r\n{SMUGGLED}"), &["200", "closed"], CHUNKED_ONLY),
        row("two equal Content-Length", "POST /a HTTP/1.1\r\nHost: t.test\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", REFUSED, Nothing),
        row("two different Content-Length", format!("POST /a HTTP/1.1\r\nHost: t.test\r\nContent-Length: 0\r\nContent-Length: {cl}\r\n\r\n{SMUGGLED}"), REFUSED, Nothing),
        row("Content-Length list", format!("POST /a HTTP/1.1\r\nHost: t.test\r\nContent-Length: 0, {cl}\r\n\r\n{SMUGGLED}"), REFUSED, Nothing),
        row("Content-Length +3", "POST /a HTTP/1.1\r\nHost: t.test\r\nContent-Length: +3\r\n\r\nabc", REFUSED, Nothing),
        row("Transfer-Encoding: xchunked", format!("POST /a HTTP/1.1\r\nHost: t.test\r\nTransfer-Encoding: xchunked\r\nContent-Length: 0\r\n\r\n{SMUGGLED}"), REFUSED, Nothing),
        row("Transfer-Encoding: chunked, identity", "POST /a HTTP/1.1\r\nHost: t.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n", REFUSED, Nothing),
        // chunked is final: the body is read as chunked and forwarded
        // re-framed, with only `chunked`.
        row("Transfer-Encoding: identity, chunked", "POST /a HTTP/1.1\r\nHost: t.test\r\nTransfer-Encoding: identity, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", &["200", "open"], One { has: &["Transfer-Encoding: chunked\r\n"], lacks: &["identity"], body: "abc" }),
        row("space before the colon", format!("POST /a HTTP/1.1\r\nHost: t.test\r\nTransfer-Encoding : chunked\r\nContent-Length: 0\r\n\r\n{SMUGGLED}"), REFUSED, Nothing),
        row("tab before the value", "POST /a HTTP/1.1\r\nHost: t.test\r\nTransfer-Encoding:\tchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", &["200", "open"], One { has: &["Transfer-Encoding: chunked\r\n"], lacks: &[], body: "abc" }),
        row("Transfer-Encoding in HTTP/1.0", "POST /a HTTP/1.0\r\nHost: t.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", REFUSED, Nothing),
        // RFC 9112 §2.2 lets a recipient accept a bare LF; forwarded with CRLF.
        row("bare LF line ends", "GET /a HTTP/1.1\nHost: t.test\nConnection: close\n\n", &["200", "closed"], One { has: &["GET /a HTTP/1.1\r\n"], lacks: &[], body: "" }),
        row("bare CR", "GET /a HTTP/1.1\rHost: t.test\r\n\r\n", REFUSED, Nothing),
        row("obs-fold", "GET /a HTTP/1.1\r\nHost: t.test\r\nX-A: a\r\n b\r\n\r\n", REFUSED, Nothing),
        row("space in a header name", "GET /a HTTP/1.1\r\nHost: t.test\r\nBad Name: x\r\n\r\n", REFUSED, Nothing),
        row("NUL in a header value", "GET /a HTTP/1.1\r\nHost: t.test\r\nX-A: a\0b\r\n\r\n", REFUSED, Nothing),
        row("control character in a value", "GET /a HTTP/1.1\r\nHost: t.test\r\nX-A: a\x01b\r\n\r\n", REFUSED, Nothing),
        row("NUL in the target", "GET /a\0b HTTP/1.1\r\nHost: t.test\r\n\r\n", REFUSED, Nothing),
        row("100 KB request line", format!("GET /{} HTTP/1.1\r\nHost: t.test\r\n\r\n", "a".repeat(100_000)), REFUSED, Nothing),
        row("300 header lines", format!("GET /a HTTP/1.1\r\nHost: t.test\r\n{}\r\n", "X-A: 1\r\n".repeat(300)), REFUSED, Nothing),
        // RFC 9112 §3.2.2: the target's host is the host; one that
        // disagrees with Host is refused rather than guessed.
        row("absolute-form, same Host", "GET http://t.test/abs HTTP/1.1\r\nHost: t.test\r\nConnection: close\r\n\r\n", &["200", "closed"], One { has: &["GET /abs HTTP/1.1\r\n"], lacks: &["http://"], body: "" }),
        row("absolute-form, other Host", "GET http://other.test/abs HTTP/1.1\r\nHost: t.test\r\n\r\n", REFUSED, Nothing),
        row("two Host lines", "GET /a HTTP/1.1\r\nHost: t.test\r\nHost: other.test\r\n\r\n", REFUSED, Nothing),
        row("no Host (HTTP/1.1)", "GET /a HTTP/1.1\r\nX-A: b\r\n\r\n", REFUSED, Nothing),
        row("Host with a path", "GET /a HTTP/1.1\r\nHost: t.test/x\r\n\r\n", REFUSED, Nothing),
        // h2c smuggling: the upgrade is not forwarded, so a backend that
        // speaks h2c never switches protocols behind the router.
        row("Upgrade: h2c", "GET /a HTTP/1.1\r\nHost: t.test\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n", &["200", "open"], One { has: &["GET /a HTTP/1.1\r\n"], lacks: &["pgrade", "HTTP2-Settings"], body: "" }),
        // A body on GET is data, framed by its length.
        row("GET with a body", format!("GET /a HTTP/1.1\r\nHost: t.test\r\nContent-Length: {cl}\r\n\r\n{SMUGGLED}"), &["200", "open"], One { has: &["Content-Length: 40\r\n"], lacks: &[], body: SMUGGLED }),
        row("chunk extension", "POST /a HTTP/1.1\r\nHost: t.test\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\n\r\n", &["200", "open"], One { has: &["Transfer-Encoding: chunked\r\n"], lacks: &[], body: "abc" }),
        row("chunk size overflowing 64 bits", format!("POST /a HTTP/1.1\r\nHost: t.test\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nabc\r\n0\r\n\r\n{SMUGGLED}"), REFUSED, Nothing),
        row("chunk size not hex", format!("POST /a HTTP/1.1\r\nHost: t.test\r\nTransfer-Encoding: chunked\r\n\r\n3x\r\nabc\r\n0\r\n\r\n{SMUGGLED}"), REFUSED, Nothing),
        row("chunk data longer than its size", format!("POST /a HTTP/1.1\r\nHost: t.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n{SMUGGLED}"), REFUSED, Nothing),
        // Pipelined requests are not served (see Known limitations): the
        // connection closes after the first response.
        row("pipelined second request", format!("GET /a HTTP/1.1\r\nHost: t.test\r\n\r\n{SMUGGLED}"), &["200", "closed"], One { has: &["GET /a HTTP/1.1\r\n"], lacks: &[], body: "" }),
        row("HTTP/1.0 without keep-alive", "GET /a HTTP/1.0\r\nHost: t.test\r\n\r\n", &["200", "closed"], One { has: &["GET /a HTTP/1.1\r\n"], lacks: &[], body: "" }),
        row("HTTP/1.2", "GET /a HTTP/1.2\r\nHost: t.test\r\n\r\n", REFUSED, Nothing),
        // Methods are case-sensitive tokens: `get` is an extension method.
        row("lowercase method", "get /a HTTP/1.1\r\nHost: t.test\r\nConnection: close\r\n\r\n", &["200", "closed"], One { has: &["get /a HTTP/1.1\r\n"], lacks: &[], body: "" }),
    ]
}

fn raw_route(backend: &RawBackend) -> String {
    let mut m = yaml::service("default", "raw", "", &[("http", 80)]);
    m += &yaml::slice("default", "raw-1", "raw", "http", backend.port, true);
    m += &yaml::ingress(
        "default",
        "raw",
        &[
            ("t.test", "/", "Prefix", "raw", "http"),
            ("other.test", "/", "Prefix", "raw", "http"),
        ],
        "",
    );
    m
}

#[test]
fn request_parsing_defence_table() {
    let backend = RawBackend::start();
    let gw = Gateway::start(&[("raw.yaml", &raw_route(&backend))], "");
    let mut failures = Vec::new();
    for r in rows() {
        let before = backend.requests().len();
        let client = exchange(gw.http, &r.raw);
        // The backend's side of an exchange can trail the client's.
        std::thread::sleep(Duration::from_millis(50));
        let seen = backend.requests()[before..].to_vec();
        if client != r.client {
            failures.push(format!(
                "{}: client saw {client:?}, want {:?}",
                r.name, r.client
            ));
        }
        match (&r.backend, seen.as_slice()) {
            (Backend::Nothing, []) => {}
            (Backend::One { has, lacks, body }, [one]) => {
                let head = names_lowercased(&one.head);
                for h in *has {
                    if !head.contains(&needle(h)) {
                        failures.push(format!(
                            "{}: backend head lacks {h:?}: {:?}",
                            r.name, one.head
                        ));
                    }
                }
                for l in *lacks {
                    if head.contains(&needle(l)) {
                        failures.push(format!(
                            "{}: backend head has {l:?}: {:?}",
                            r.name, one.head
                        ));
                    }
                }
                if one.body != body.as_bytes() {
                    failures.push(format!(
                        "{}: backend body {:?}, want {body:?}",
                        r.name,
                        String::from_utf8_lossy(&one.body)
                    ));
                }
            }
            (_, seen) => failures.push(format!(
                "{}: backend saw {} requests: {seen:?}",
                r.name,
                seen.len()
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // No connection to the backend was left poisoned: ordinary requests
    // after the table reach it intact, and nothing smuggled ever did.
    for i in 0..20 {
        let r = http_get(gw.http, "t.test", &format!("/after/{i}")).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let all = backend.requests();
    let well_formed = regex_free_request_line;
    for req in &all {
        assert!(!req.head.contains("/smuggled"), "smuggled through: {req:?}");
        assert!(
            well_formed(&req.head),
            "malformed request reached the backend: {req:?}"
        );
    }
    let after: Vec<_> = all.iter().filter(|r| r.head.contains("/after/")).collect();
    assert_eq!(after.len(), 20);
}

/// The head with its header names in lowercase: names are
/// case-insensitive (RFC 9110 §5.1) and go upstream in lowercase unless
/// `proxy.preserve_header_case`; the request line is kept as sent.
fn names_lowercased(head: &str) -> String {
    let mut lines = head.split("\r\n");
    let mut out = lines.next().unwrap_or("").to_string();
    for line in lines {
        out.push_str("\r\n");
        match line.split_once(':') {
            Some((name, rest)) => {
                out.push_str(&name.to_ascii_lowercase());
                out.push(':');
                out.push_str(rest);
            }
            None => out.push_str(line),
        }
    }
    out
}

/// A row's expectation in the same form: a request line as written, a
/// header line with its name lowercased, a bare name lowercased.
fn needle(n: &str) -> String {
    if n.contains(" HTTP/1.") {
        n.to_string()
    } else if let Some((name, rest)) = n.split_once(':') {
        format!("{}:{rest}", name.to_ascii_lowercase())
    } else {
        n.to_ascii_lowercase()
    }
}

/// `METHOD /path HTTP/1.1\r\n` and nothing before it.
fn regex_free_request_line(head: &str) -> bool {
    let Some(line) = head.split("\r\n").next() else {
        return false;
    };
    let parts: Vec<&str> = line.split(' ').collect();
    parts.len() == 3
        && !parts[0].is_empty()
        && parts[0].bytes().all(|b| b.is_ascii_alphabetic())
        && parts[1].starts_with('/')
        && parts[2] == "HTTP/1.1"
}

/// One hostile HTTP/2 request: its header list in order (pseudo-headers
/// included) and an optional body.
struct H2Row {
    name: &'static str,
    headers: Vec<(String, String)>,
    body: Option<String>,
    /// What the client may see: a status, or `reset:CODE`.
    client: &'static [&'static str],
    backend: Backend,
}

/// A malformed request (RFC 9113 §8.1.1): the stream is reset (the `h2`
/// crate ends the whole connection when a field fails HPACK-level
/// checks), or answered 400, and nothing is forwarded.
const MALFORMED: &[&str] = &["reset:PROTOCOL_ERROR", "goaway:PROTOCOL_ERROR", "400"];

/// `GET t.test/a` with `edit` applied to its header list.
fn h2_request(edit: impl FnOnce(&mut Vec<(String, String)>)) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "t.test"),
        (":path", "/a"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    edit(&mut h);
    h
}

fn with(name: &str, value: &str) -> Vec<(String, String)> {
    h2_request(|h| h.push((name.into(), value.into())))
}

fn without(name: &str) -> Vec<(String, String)> {
    h2_request(|h| h.retain(|(n, _)| n != name))
}

fn replaced(name: &str, value: &str) -> Vec<(String, String)> {
    h2_request(|h| {
        for (n, v) in h.iter_mut() {
            if n == name {
                *v = value.into();
            }
        }
    })
}

/// The HTTP/2 rows, documented in README beside the HTTP/1.1 ones.
fn h2_rows() -> Vec<H2Row> {
    use Backend::*;
    let r = |name, headers, body: Option<&str>, client, backend| H2Row {
        name,
        headers,
        body: body.map(String::from),
        client,
        backend,
    };
    let ok = &["200"][..];
    vec![
        // h2 → h1 request splitting: HPACK carries any bytes.
        r(
            "CRLF in a header value",
            with("x-a", "a\r\nTransfer-Encoding: chunked"),
            None,
            MALFORMED,
            Nothing,
        ),
        r(
            "CRLF in :path",
            replaced(":path", "/a HTTP/1.1\r\nHost: t.test\r\n\r\nGET /smuggled"),
            None,
            MALFORMED,
            Nothing,
        ),
        r(
            "NUL in a header value",
            with("x-a", "a\0b"),
            None,
            MALFORMED,
            Nothing,
        ),
        r(
            "space in a header name",
            with("x a", "b"),
            None,
            MALFORMED,
            Nothing,
        ),
        r(
            "uppercase header name",
            with("X-A", "b"),
            None,
            MALFORMED,
            Nothing,
        ),
        // Connection-specific fields (RFC 9113 §8.2.2).
        r(
            "connection header",
            with("connection", "keep-alive"),
            None,
            MALFORMED,
            Nothing,
        ),
        r(
            "transfer-encoding header",
            h2_request(|h| h.push(("transfer-encoding".into(), "chunked".into()))),
            Some("3\r\nabc\r\n0\r\n\r\n"),
            MALFORMED,
            Nothing,
        ),
        r(
            "upgrade header",
            with("upgrade", "websocket"),
            None,
            MALFORMED,
            Nothing,
        ),
        r("te: gzip", with("te", "gzip"), None, MALFORMED, Nothing),
        r(
            "te: trailers",
            with("te", "trailers"),
            None,
            ok,
            One {
                has: &["GET /a HTTP/1.1\r\n"],
                lacks: &[],
                body: "",
            },
        ),
        // Pseudo-header rules (RFC 9113 §8.3).
        r(
            "pseudo-header after a regular one",
            h2_request(|h| {
                let p = h.remove(3);
                h.push(("x-a".into(), "b".into()));
                h.push(p);
            }),
            None,
            MALFORMED,
            Nothing,
        ),
        r(
            "two :path",
            with(":path", "/smuggled"),
            None,
            MALFORMED,
            Nothing,
        ),
        r("no :path", without(":path"), None, MALFORMED, Nothing),
        r("no :method", without(":method"), None, MALFORMED, Nothing),
        r("no :scheme", without(":scheme"), None, MALFORMED, Nothing),
        r(
            "unknown pseudo-header",
            with(":foo", "bar"),
            None,
            MALFORMED,
            Nothing,
        ),
        r(
            ":status in a request",
            with(":status", "200"),
            None,
            MALFORMED,
            Nothing,
        ),
        r(
            "empty :path",
            replaced(":path", ""),
            None,
            MALFORMED,
            Nothing,
        ),
        r(
            ":path not starting with /",
            replaced(":path", "a/b"),
            None,
            MALFORMED,
            Nothing,
        ),
        r(
            ":authority and host disagree",
            with("host", "other.test"),
            None,
            MALFORMED,
            Nothing,
        ),
        r(
            "host only",
            h2_request(|h| {
                h.retain(|(n, _)| n != ":authority");
                h.push(("host".into(), "t.test".into()));
            }),
            None,
            ok,
            One {
                has: &["GET /a HTTP/1.1\r\n", "host: t.test"],
                lacks: &[],
                body: "",
            },
        ),
        // Body framing: the length must match the DATA frames.
        r(
            "content-length above the data",
            with("content-length", "5"),
            Some("abc"),
            MALFORMED,
            Nothing,
        ),
        r(
            "content-length below the data",
            with("content-length", "2"),
            Some("abc"),
            MALFORMED,
            Nothing,
        ),
        r(
            "body without content-length",
            h2_request(|h| h[0].1 = "POST".into()),
            Some("abc"),
            ok,
            One {
                has: &["POST /a HTTP/1.1\r\n"],
                lacks: &[],
                body: "abc",
            },
        ),
        // RFC 9113 §8.2.3: split cookies are joined for HTTP/1.1.
        r(
            "cookie split in two fields",
            h2_request(|h| {
                h.push(("cookie".into(), "a=1".into()));
                h.push(("cookie".into(), "b=2".into()));
            }),
            None,
            ok,
            One {
                has: &["cookie: a=1; b=2\r\n"],
                lacks: &[],
                body: "",
            },
        ),
        r(
            "300 header fields",
            h2_request(|h| h.extend((0..300).map(|i| (format!("x-{i}"), "1".into())))),
            None,
            &["431", "400", "reset:PROTOCOL_ERROR", "reset:REFUSED_STREAM"],
            Nothing,
        ),
    ]
}

#[test]
fn http2_defence_table() {
    let backend = RawBackend::start();
    let gw = Gateway::start(&[("raw.yaml", &raw_route(&backend))], "");
    let rows = h2_rows();
    let spec = serde_json::json!({
        "port": gw.http,
        "rows": rows.iter().map(|r| serde_json::json!({"headers": r.headers, "body": r.body})).collect::<Vec<_>>(),
    });
    let script = workspace_root().join("integration-tests/scripts/h2_raw.py");
    let mut child = std::process::Command::new("/usr/bin/python3")
        .arg(&script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (scripts/deps.sh test installs python3-h2)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(spec.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let answers: Vec<String> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "h2_raw.py: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(answers.len(), rows.len());
    std::thread::sleep(Duration::from_millis(200));
    let seen = backend.requests();
    let mut failures = Vec::new();
    for (r, answer) in rows.iter().zip(&answers) {
        eprintln!("{}: {answer}", r.name);
        if !r.client.contains(&answer.as_str()) {
            failures.push(format!(
                "{}: client saw {answer}, want one of {:?}",
                r.name, r.client
            ));
        }
    }
    // Each row's request is told apart at the backend by what it carries;
    // the rows that must reach it are counted, the others must not.
    let wanted: Vec<&H2Row> = rows
        .iter()
        .filter(|r| matches!(r.backend, Backend::One { .. }))
        .collect();
    if seen.len() != wanted.len() {
        failures.push(format!(
            "backend saw {} requests, want {}: {:#?}",
            seen.len(),
            wanted.len(),
            seen.iter().map(|r| &r.head).collect::<Vec<_>>()
        ));
    }
    for r in wanted {
        let Backend::One { has, lacks, body } = &r.backend else {
            continue;
        };
        let found = seen.iter().any(|req| {
            let head = names_lowercased(&req.head);
            has.iter().all(|h| head.contains(&needle(h)))
                && !lacks.iter().any(|l| head.contains(&needle(l)))
                && req.body == body.as_bytes()
        });
        if !found {
            failures.push(format!("{}: no backend request matches", r.name));
        }
    }
    for req in &seen {
        if req.head.contains("smuggled") || !regex_free_request_line(&req.head) {
            failures.push(format!("reached the backend: {:?}", req.head));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // And the backend connections are still good.
    for i in 0..10 {
        let r = http_get(gw.http, "t.test", &format!("/after/{i}")).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

#[test]
fn http_1_0_keep_alive_is_honoured_on_request() {
    let backend = RawBackend::start();
    let gw = Gateway::start(&[("raw.yaml", &raw_route(&backend))], "");
    let mut s = TcpStream::connect(addr(gw.http)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for path in ["/one", "/two"] {
        s.write_all(
            format!("GET {path} HTTP/1.0\r\nHost: t.test\r\nConnection: keep-alive\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        let r = read_response(&mut s).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("connection"),
            Some("keep-alive"),
            "{:?}",
            r.headers
        );
    }
    // Without keep-alive, HTTP/1.0 closes after one response.
    s.write_all(b"GET /three HTTP/1.0\r\nHost: t.test\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s).unwrap().status, 200);
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0, "{rest:?}");
    let targets: Vec<_> = backend
        .requests()
        .iter()
        .map(|r| r.head.split(' ').nth(1).unwrap_or_default().to_string())
        .collect();
    assert_eq!(targets, ["/one", "/two", "/three"]);
}
