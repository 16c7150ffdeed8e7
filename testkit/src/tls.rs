//! TLS fixtures: a private certificate authority with a server certificate
//! (made with `openssl`), and a TLS terminator (`socat`) that puts TLS in
//! front of any TCP service. Both clean up on drop: the directory, and the
//! terminator's whole process group.
//!
//! The server certificate names `DNS:localhost` and `IP:127.0.0.1`: rustls
//! checks the host name (or address) a client dialled against the subject
//! alternative names, and PostgreSQL's `verify-full` does too.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// A private CA and one server certificate signed by it, in a directory of
/// their own (removed on drop).
pub struct TestCa {
    /// The directory (world-readable: servers run as their own users).
    pub dir: PathBuf,
    /// The CA certificate (PEM): what a client trusts (`SSL_CERT_FILE`).
    pub ca: PathBuf,
    /// The server certificate (PEM), for `localhost` and `127.0.0.1`.
    pub cert: PathBuf,
    /// The server's private key (PEM, unencrypted, readable by all: a test key).
    pub key: PathBuf,
}

impl TestCa {
    /// Makes a CA called `name` and a server certificate it signed (P-256
    /// keys: quick to make, and every server here takes them).
    pub fn create(name: &str) -> anyhow::Result<TestCa> {
        let random = uuid::Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!(
            "fleet-tls-{name}-{}-{}",
            std::process::id(),
            &random[..8]
        ));
        std::fs::create_dir_all(&dir)?;
        let ca = TestCa {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            dir,
        };
        std::fs::set_permissions(&ca.dir, std::fs::Permissions::from_mode(0o755))?;
        std::fs::write(
            ca.dir.join("ca.cnf"),
            format!(
                "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = v3_ca\n\
                 [dn]\nCN = fleet test CA {name}\n\
                 [v3_ca]\nbasicConstraints = critical,CA:TRUE\n\
                 keyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n"
            ),
        )?;
        std::fs::write(
            ca.dir.join("server.cnf"),
            "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = localhost\n\
             [v3_srv]\nbasicConstraints = critical,CA:FALSE\n\
             keyUsage = critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage = serverAuth\n\
             subjectAltName = DNS:localhost,IP:127.0.0.1\n\
             authorityKeyIdentifier = keyid\nsubjectKeyIdentifier = hash\n",
        )?;
        let d = |f: &str| ca.dir.join(f).to_string_lossy().into_owned();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509", "-config", &d("ca.cnf"), "-days", "2"][..],
                &ec,
                &["-keyout", &d("ca.key"), "-out", &d("ca.pem")],
            ]
            .concat(),
        )?;
        openssl(
            &[
                &["req", "-new", "-config", &d("server.cnf")][..],
                &ec,
                &["-keyout", &d("server.key"), "-out", &d("server.csr")],
            ]
            .concat(),
        )?;
        let serial = format!("0x{}", &random[8..24]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &d("server.csr"),
            "-CA",
            &d("ca.pem"),
            "-CAkey",
            &d("ca.key"),
            "-set_serial",
            &serial,
            "-days",
            "2",
            "-extfile",
            &d("server.cnf"),
            "-extensions",
            "v3_srv",
            "-out",
            &d("server.pem"),
        ])?;
        for f in ["ca.pem", "server.pem", "server.key"] {
            std::fs::set_permissions(ca.dir.join(f), std::fs::Permissions::from_mode(0o644))?;
        }
        Ok(ca)
    }

    /// A copy of the server key owned by `user` with mode 0600 (PostgreSQL
    /// refuses a key others can read).
    pub fn key_for(&self, user: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(format!("server-{user}.key"));
        std::fs::copy(&self.key, &path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let ok = Command::new("chown")
            .arg(format!("{user}:{user}"))
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            bail!("could not give {} to {user}", path.display());
        }
        Ok(path)
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running openssl (is it installed? scripts/services.sh)")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `socat` terminating TLS on a free loopback port and forwarding the
/// plaintext to `127.0.0.1:<target>`. Stopped (its whole process group,
/// the per-connection children too) on drop.
pub struct TlsProxy {
    /// The TLS port.
    pub port: u16,
    child: std::process::Child,
}

impl TlsProxy {
    /// Starts the terminator with `ca`'s server certificate and waits until
    /// it accepts connections.
    pub fn start(ca: &TestCa, target: u16) -> anyhow::Result<TlsProxy> {
        let port = crate::free_port();
        let listen = format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,cert={},key={},verify=0,fork,reuseaddr",
            ca.cert.display(),
            ca.key.display()
        );
        let child = Command::new("socat")
            .arg(listen)
            .arg(format!("TCP:127.0.0.1:{target}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group: the children it forks per connection go with it.
            .process_group(0)
            .spawn()
            .context("starting socat (is it installed? scripts/services.sh)")?;
        let mut proxy = TlsProxy { port, child };
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                bail!("socat exited at once ({status}) on port {port}");
            }
            if t.elapsed() > Duration::from_secs(10) {
                bail!("socat did not listen on port {port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(proxy)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-TERM", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
