#!/usr/bin/python3
"""Sends hostile HTTP/2 requests (prior knowledge, h2c) and says what came back.

A test client for the request-parsing defence table
(integration-tests/tests/defences.rs): the python3-h2 library (Debian's
python3-h2) with its own checks turned off, so it sends what a hostile
client would: CRLF and NUL in values, uppercase or connection-specific
header names, misplaced, repeated or unknown pseudo-headers, wrong
content-length. One fresh connection per request.

stdin: {"port": N, "rows": [{"headers": [[name, value], ...], "body": str|null}]}
  (names and values are sent as their Latin-1 bytes)
stdout: one JSON list, per row: "200" (the response status), "reset:CODE"
  (RST_STREAM), "goaway:CODE", "closed" or "timeout".
"""
import json
import socket
import sys
import time

import h2.config
import h2.connection
import h2.errors
import h2.exceptions
import h2.events


def send(port, row):
    config = h2.config.H2Configuration(
        client_side=True,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        header_encoding=None,
    )
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    sock = socket.create_connection(("127.0.0.1", port), timeout=3)
    sock.sendall(conn.data_to_send())
    headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in row["headers"]]
    body = row.get("body")
    stream = conn.get_next_available_stream_id()
    conn.send_headers(stream, headers, end_stream=body is None)
    if body is not None:
        conn.send_data(stream, body.encode("latin-1"), end_stream=True)
    sock.sendall(conn.data_to_send())
    deadline = time.monotonic() + 3
    try:
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                return "closed"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers).get(b":status", b"?")
                    return status.decode()
                if isinstance(event, h2.events.StreamReset):
                    return "reset:" + h2.errors.ErrorCodes(event.error_code).name
                if isinstance(event, h2.events.ConnectionTerminated):
                    return "goaway:" + h2.errors.ErrorCodes(event.error_code).name
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
        return "timeout"
    except socket.timeout:
        return "timeout"
    except h2.exceptions.ProtocolError as e:
        return "client-error:" + type(e).__name__
    finally:
        sock.close()


def main():
    spec = json.load(sys.stdin)
    print(json.dumps([send(spec["port"], row) for row in spec["rows"]]))


if __name__ == "__main__":
    main()
