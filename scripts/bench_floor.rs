// The harness floor of `scripts/bench`: a program that does nothing but
// what the Lambda runtime protocol asks (poll /next, post a response), so
// its figures are the cost of exec, of the stub Runtime API and of the
// measurement itself. Built by scripts/bench with `rustc -O`.
use std::io::{Read, Write};
use std::net::TcpStream;

fn exchange(addr: &str, request: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("runtime api");
    s.write_all(request.as_bytes()).expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).expect("read");
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                break;
            }
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn main() {
    let addr = std::env::var("AWS_LAMBDA_RUNTIME_API").expect("AWS_LAMBDA_RUNTIME_API");
    let next = exchange(&addr, &format!("GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"));
    let id = next
        .lines()
        .find_map(|l| l.strip_prefix("Lambda-Runtime-Aws-Request-Id: ").or_else(|| l.strip_prefix("lambda-runtime-aws-request-id: ")))
        .unwrap_or("none")
        .trim()
        .to_string();
    let body = "{\"statusCode\":200}";
    exchange(&addr, &format!("POST /2018-06-01/runtime/invocation/{id}/response HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()));
}
