//! Outbound TLS trusts a CA named in `tls.extra_ca_file` (a corporate CA
//! that re-signs traffic, a provider's private CA), and check-config
//! names the key when the file is not one. The server is a real TLS
//! server on loopback: `openssl s_server` with a certificate signed by a
//! CA made for the test.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca.pem`) and a server certificate for 127.0.0.1 it signed.
fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=payrecon test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
}

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn provider_calls_trust_the_extra_ca_file_and_only_then() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = Server(
        Command::new("openssl")
            .current_dir(dir.path())
            .args([
                "s_server",
                "-quiet",
                "-www",
                "-accept",
                &port.to_string(),
                "-cert",
                "server.pem",
                "-key",
                "server.key",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let url = format!("https://127.0.0.1:{port}/");

    // Loaded without the CA: the provider client refuses the certificate.
    let base = "[store]\npath = \"/tmp/unused\"\n";
    payrecon::config::Config::parse("a.toml", base, &Default::default()).unwrap();
    let err = payrecon::providers::http_client(Duration::from_secs(5))
        .get(&url)
        .send()
        .await
        .expect_err("an unknown CA is refused");
    let chain = format!("{err:?}").to_lowercase();
    assert!(chain.contains("certificate"), "{chain}");

    // With it: the same call succeeds.
    let with_ca = format!(
        "{base}\n[tls]\nextra_ca_file = \"{}\"\n",
        dir.path().join("ca.pem").display()
    );
    payrecon::config::Config::parse("b.toml", &with_ca, &Default::default()).unwrap();
    let answer = payrecon::providers::http_client(Duration::from_secs(5))
        .get(&url)
        .send()
        .await
        .expect("the extra CA is trusted");
    assert!(answer.status().is_success(), "{}", answer.status());

    // A file that is not certificates is a config error naming the key.
    std::fs::write(dir.path().join("junk.pem"), "not a certificate\n").unwrap();
    let junk = format!(
        "{base}\n[tls]\nextra_ca_file = \"{}\"\n",
        dir.path().join("junk.pem").display()
    );
    let e = payrecon::config::Config::parse("c.toml", &junk, &Default::default())
        .expect_err("junk is refused")
        .to_string();
    assert!(
        e.contains("c.toml:5") && e.contains("tls.extra_ca_file"),
        "{e}"
    );
}
