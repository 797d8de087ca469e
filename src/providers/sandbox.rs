//! What every provider sandbox (`providers/<name>/sim.rs`) shares: the
//! fault knobs applied before a request is read, and the HTTP server it
//! answers on.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::Request;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::{self, Answer, CloseConnection};

/// A sandbox's HTTP server: serves `handler` on its listener until
/// `cancel` fires or [`Server::shutdown`] is called.
#[derive(Clone)]
pub struct Server {
    addr: SocketAddr,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Server {
    pub fn start<H, F>(listener: TcpListener, cancel: CancellationToken, handler: H) -> Server
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Result<Answer, CloseConnection>> + Send + 'static,
    {
        let addr = listener.local_addr().expect("bound listener");
        let tasks = TaskTracker::new();
        tasks.spawn(http::serve(
            listener,
            http::Limits::sandbox(),
            cancel.clone(),
            tasks.clone(),
            handler,
        ));
        Server {
            addr,
            cancel,
            tasks,
        }
    }

    /// `http://` and the address it listens on.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting and waits for open connections to finish.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// The fault knobs every sandbox shares, applied before a request is read.
#[derive(Debug, Clone, Default)]
pub struct CommonFaults {
    /// Added to every answer.
    pub latency_ms: u64,
    /// Share of requests answered 5xx before anything is applied.
    pub error_rate: f64,
    /// Share of requests whose connection is closed before anything is applied.
    pub drop_rate: f64,
}

/// What the shared knobs decide for one request.
pub enum Fault {
    None,
    Error,
    Drop,
}

impl CommonFaults {
    /// Sleeps the latency, then draws the error and drop rates.
    pub async fn apply(&self) -> Fault {
        if self.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.latency_ms)).await;
        }
        if fastrand::f64() < self.drop_rate {
            Fault::Drop
        } else if fastrand::f64() < self.error_rate {
            Fault::Error
        } else {
            Fault::None
        }
    }
}
