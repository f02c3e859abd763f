//! A small HTTP/1.1 client written for the tests (not the server's parser): one
//! keep-alive connection, requests written as given, responses framed by their
//! Content-Length.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {:?} (status {})",
                String::from_utf8_lossy(&self.body),
                self.status
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub struct Http {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Http {
    pub fn connect(addr: SocketAddr) -> Http {
        let stream = TcpStream::connect(addr).expect("connect to --http");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Http {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends a request; `headers` are extra lines like `"Authorization: Bearer k"`.
    pub fn send(&mut self, method: &str, target: &str, headers: &[&str], body: &[u8]) {
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: test\r\n");
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.stream.write_all(&bytes).unwrap();
    }

    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[&str],
        body: &[u8],
    ) -> Response {
        self.send(method, target, headers, body);
        self.read(method == "HEAD")
    }

    pub fn get(&mut self, target: &str) -> Response {
        self.request("GET", target, &[], b"")
    }

    /// POST with a JSON body.
    pub fn post_json(&mut self, target: &str, body: &serde_json::Value) -> Response {
        self.request(
            "POST",
            target,
            &["Content-Type: application/json"],
            body.to_string().as_bytes(),
        )
    }

    /// Reads one response (a HEAD response has no body whatever its length says).
    pub fn read(&mut self, head_only: bool) -> Response {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let mut lines = head.split("\r\n");
                let status_line = lines.next().unwrap_or("");
                let status: u16 = status_line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                if status == 100 {
                    self.buf.drain(..end + 4);
                    continue;
                }
                let len: usize = if head_only {
                    0
                } else {
                    headers
                        .iter()
                        .find(|(k, _)| k == "content-length")
                        .map(|(_, v)| v.parse().expect("content-length"))
                        .expect("every response has a Content-Length")
                };
                while self.buf.len() < end + 4 + len {
                    self.fill();
                }
                let body = self.buf[end + 4..end + 4 + len].to_vec();
                self.buf.drain(..end + 4 + len);
                return Response {
                    status,
                    headers,
                    body,
                };
            }
            self.fill();
        }
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.stream.read(&mut chunk).expect("read response");
        assert!(
            n > 0,
            "server closed before a whole response: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// True once the server has closed the connection (after any bytes left).
    pub fn closed_by_server(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        matches!(self.stream.read(&mut chunk), Ok(0))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
