//! The systemd notify protocol, spoken directly: one datagram per message
//! to the Unix socket named by `$NOTIFY_SOCKET` (a path, or an abstract
//! name starting with `@`). Without the variable every call is a no-op,
//! so the daemon runs the same under systemd, in a shell and in tests.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where to send notifications, read once from the environment.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<String>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`.
    pub fn from_env() -> Notifier {
        let socket = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|s| !s.is_empty());
        // WATCHDOG_PID, when set, names the process systemd expects the
        // pings from; any other process must not send them.
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us)
            .map(Duration::from_micros);
        Notifier { socket, watchdog }
    }

    /// `WatchdogSec=` as systemd passed it, if the watchdog is on.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `state` (e.g. `READY=1\nSTATUS=serving`). Errors are returned
    /// for the caller to log; systemd not listening is not fatal.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        let Some(path) = &self.socket else {
            return Ok(());
        };
        let sock = UnixDatagram::unbound()?;
        match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                sock.send_to_addr(state.as_bytes(), &addr)?;
            }
            None => {
                sock.send_to(state.as_bytes(), path)?;
            }
        }
        Ok(())
    }

    /// Like [`Notifier::notify`], logging a failure instead of returning it.
    pub fn send(&self, state: &str) {
        if let Err(e) = self.notify(state) {
            tracing::warn!(error = %e, state, "sd_notify failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_datagrams_to_the_socket_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            socket: Some(path.display().to_string()),
            watchdog: None,
        };
        n.notify("READY=1").unwrap();
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        // No socket: nothing to do, no error.
        Notifier::default().notify("READY=1").unwrap();
    }
}
