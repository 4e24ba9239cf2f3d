//! The web server the demo import downloads from: fixed files on
//! `127.0.0.1:<ephemeral port>`, served from a thread, with a record of the
//! requests so the quick start can show who fetched what.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// One request the server answered.
#[derive(Debug, Clone)]
pub struct Hit {
    pub path: String,
    pub user_agent: String,
    pub status: u16,
    pub bytes: usize,
}

/// A running server; dropped = stopped.
pub struct Server {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    hits: Arc<Mutex<Vec<Hit>>>,
    pub port: u16,
}

impl Server {
    /// Serves `files` (URL path without the leading `/` → bytes) on loopback.
    pub fn start(files: HashMap<String, Arc<Vec<u8>>>) -> anyhow::Result<Server> {
        let server = tiny_http::Server::http("127.0.0.1:0")
            .map_err(|e| anyhow::anyhow!("cannot listen on 127.0.0.1: {e}"))?;
        let port = server
            .server_addr()
            .to_ip()
            .map(|a| a.port())
            .ok_or_else(|| anyhow::anyhow!("the server has no IP address"))?;
        let server = Arc::new(server);
        let hits = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let server = server.clone();
            let hits = hits.clone();
            std::thread::spawn(move || {
                for req in server.incoming_requests() {
                    let path = req.url().trim_start_matches('/').to_string();
                    let user_agent = req
                        .headers()
                        .iter()
                        .find(|h| h.field.equiv("User-Agent"))
                        .map(|h| h.value.to_string())
                        .unwrap_or_default();
                    let data = files.get(&path);
                    let (status, bytes) = data.map_or((404, 0), |d| (200, d.len()));
                    // A client that hung up mid-response is the client's
                    // problem; the record shows the request either way.
                    let _ = match data {
                        Some(d) => req.respond(octets(d)),
                        None => req.respond(tiny_http::Response::empty(404)),
                    };
                    if let Ok(mut h) = hits.lock() {
                        h.push(Hit {
                            path,
                            user_agent,
                            status,
                            bytes,
                        });
                    }
                }
            })
        };
        Ok(Server {
            server,
            thread: Some(thread),
            hits,
            port,
        })
    }

    /// `http://127.0.0.1:<port>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// The requests answered since the last call.
    pub fn take_hits(&self) -> Vec<Hit> {
        self.hits
            .lock()
            .map(|mut h| std::mem::take(&mut *h))
            .unwrap_or_default()
    }
}

fn octets(data: &[u8]) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let content_type = tiny_http::Header::from_bytes("Content-Type", "application/octet-stream")
        .expect("a valid header");
    tiny_http::Response::from_data(data.to_vec()).with_header(content_type)
}

impl Drop for Server {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
