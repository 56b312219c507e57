//! A TCP proxy in front of the Drive simulator that can cut the connection once a given number of
//! request bytes went through it: a network failure in the middle of an upload request.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct State {
    /// Client-to-server bytes forwarded so far, over every connection.
    forwarded: u64,
    /// Cut the connection that carries the byte at this count (once).
    cut_at: Option<u64>,
    cuts: u32,
}

pub struct CutProxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl CutProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let back = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                    });
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match client_read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let cut = {
                            let mut s = state.lock().unwrap();
                            let before = s.forwarded;
                            s.forwarded += n as u64;
                            match s.cut_at {
                                Some(at) if s.forwarded > at => {
                                    s.cut_at = None;
                                    s.cuts += 1;
                                    Some((at - before) as usize)
                                }
                                _ => None,
                            }
                        };
                        if let Some(keep) = cut {
                            // Forward up to the cut point, then drop both directions.
                            let _ = server_write.write_all(&buf[..keep]).await;
                            break;
                        }
                        if server_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    back.abort();
                });
            }
        });
        CutProxy { addr, state }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts the connection once `bytes` more request bytes went through.
    pub fn cut_after(&self, bytes: u64) {
        let mut s = self.state.lock().unwrap();
        s.cut_at = Some(s.forwarded + bytes);
    }

    pub fn cuts(&self) -> u32 {
        self.state.lock().unwrap().cuts
    }
}
