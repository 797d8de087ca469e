//! A TCP proxy on loopback: a load balancer in front of several
//! instances (each connection to the next backend that accepts it, as a
//! balancer with health checks sends it), or a link to a database that a
//! test cuts and restores.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct Proxy {
    pub addr: SocketAddr,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
    /// Cancelled by a cut: ends every connection through the proxy and
    /// refuses new ones until a restore puts a fresh token in.
    link: Arc<Mutex<Option<CancellationToken>>>,
}

impl Proxy {
    pub async fn start(cancel: CancellationToken) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            backends: Arc::default(),
            link: Arc::new(Mutex::new(Some(CancellationToken::new()))),
        };
        let p = proxy.clone();
        tokio::spawn(async move {
            let mut next = 0usize;
            loop {
                let inbound = tokio::select! {
                    _ = cancel.cancelled() => return,
                    a = listener.accept() => match a {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                };
                let Some(link) = p.link.lock().unwrap().clone() else {
                    continue; // cut: the connection is dropped
                };
                let all = p.backends.lock().unwrap().clone();
                next += 1;
                tokio::spawn(relay(inbound, all, next, link));
            }
        });
        proxy
    }

    /// Adds a backend by address or by a URL on it (`http://host:port/…`).
    pub fn add(&self, url_or_addr: &str) {
        let hostport = url_or_addr
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap();
        self.backends
            .lock()
            .unwrap()
            .push(hostport.parse().unwrap());
    }

    /// Ends every connection and refuses new ones.
    pub fn cut(&self) {
        if let Some(link) = self.link.lock().unwrap().take() {
            link.cancel();
        }
    }

    pub fn restore(&self) {
        *self.link.lock().unwrap() = Some(CancellationToken::new());
    }
}

async fn relay(
    mut inbound: TcpStream,
    backends: Vec<SocketAddr>,
    first: usize,
    link: CancellationToken,
) {
    for i in 0..backends.len() {
        let to = backends[(first + i) % backends.len()];
        if let Ok(mut out) = TcpStream::connect(to).await {
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                _ = link.cancelled() => {}
            }
            return;
        }
    }
}
