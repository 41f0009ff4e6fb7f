//! A small real HTTP server standing in for an operator's `on_publish` / `on_play` webhook: it
//! reads each JSON body, keeps it, and answers what the test decides (a status, or nothing).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the hook answers to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// This HTTP status line, e.g. `"200 OK"`.
    Status(&'static str),
    /// Nothing, ever: the caller's timeout decides.
    Hang,
    /// `200 OK` with this JSON body.
    Json(&'static str),
}

/// A running hook.
pub struct Hook {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Hook {
    /// Starts a hook answering each JSON body with `decide(body)`.
    pub async fn start(
        decide: impl Fn(&serde_json::Value) -> Answer + Send + Sync + 'static,
    ) -> Result<Hook> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let decide = Arc::new(decide);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let sink = sink.clone();
                let decide = decide.clone();
                tokio::spawn(async move {
                    let Some(body) = read_body(&mut socket).await else {
                        return;
                    };
                    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    let answer = decide(&json);
                    sink.lock().unwrap().push(json);
                    match answer {
                        Answer::Hang => tokio::time::sleep(Duration::from_secs(60)).await,
                        Answer::Status(status) => {
                            let _ = socket
                                .write_all(
                                    format!(
                                        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                                    )
                                    .as_bytes(),
                                )
                                .await;
                        }
                        Answer::Json(body) => {
                            let _ = socket
                                .write_all(
                                    format!(
                                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                        body.len()
                                    )
                                    .as_bytes(),
                                )
                                .await;
                        }
                    }
                });
            }
        });
        Ok(Hook { addr, received })
    }

    /// `http://ADDR/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every JSON body received so far.
    pub fn received(&self) -> Vec<serde_json::Value> {
        self.received.lock().unwrap().clone()
    }
}

/// Reads a request head, then a body of `Content-Length` bytes.
async fn read_body(socket: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                return Some(body.to_owned());
            }
        }
    }
}
