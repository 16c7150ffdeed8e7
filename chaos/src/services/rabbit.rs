//! A RabbitMQ node of the suite's own, beside the machine's (which pins
//! 5672 in /etc/rabbitmq/rabbitmq.conf and serves other tests).
//!
//! The node runs as the `rabbitmq` user from the Debian package, with its
//! own node name, config file (listener, management port), plugins file,
//! data and log directories, distribution port, Erlang cookie (HOME is the
//! node's directory) and an environment file that replaces the machine's
//! (`/etc/rabbitmq/rabbitmq-env.conf` names the machine's node). Its
//! open-files limit is raised inside `runuser`, which resets it to 1,024: a
//! node at that limit can end up accepting connections without ever
//! answering them (shared/CRATES.md, "RabbitMQ as a test fixture").

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::{
    chown_tree, free_port, free_port_range, last_lines, port_open, run_cmd, run_cmd_blocking,
    signal,
};

/// Where the package puts the real scripts (the /usr/sbin wrappers switch
/// user and reset HOME, which would lose the node's own cookie).
const RMQ_BIN: &str = "/usr/lib/rabbitmq/bin";
/// How long a start may take on a busy 2-core machine.
const START_WAIT: Duration = Duration::from_secs(180);

/// One RabbitMQ node in a directory of its own.
pub struct RabbitNode {
    /// `chaos<pid>@localhost`.
    pub node: String,
    /// Config, cookie, data (`mnesia/`) and logs (`log/`).
    pub dir: PathBuf,
    pub amqp_port: u16,
    pub mgmt_port: u16,
    /// The AMQP TLS listener, when [`enable_tls`](Self::enable_tls) added one.
    pub amqps_port: Option<u16>,
    /// The management API's TLS listener, likewise.
    pub mgmt_tls_port: Option<u16>,
    dist_port: u16,
    /// First of the ports the CLI tools may use for their own distribution.
    ctl_port: u16,
    /// Whether the node may be running (Drop stops it then).
    started: bool,
}

impl RabbitNode {
    /// Prepares a node in `dir` (created) on free ports; does not start it.
    pub fn prepare(dir: &Path, name: &str) -> anyhow::Result<Self> {
        let node = RabbitNode {
            node: format!("{name}@localhost"),
            dir: dir.to_path_buf(),
            amqp_port: free_port()?,
            mgmt_port: free_port()?,
            amqps_port: None,
            mgmt_tls_port: None,
            dist_port: free_port()?,
            ctl_port: free_port_range(8)?,
            started: false,
        };
        std::fs::create_dir_all(dir.join("mnesia"))?;
        std::fs::create_dir_all(dir.join("log"))?;
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "# The fault suite's own node ({}).\n\
                 listeners.tcp.local = 127.0.0.1:{}\n\
                 management.tcp.ip = 127.0.0.1\n\
                 management.tcp.port = {}\n\
                 log.file.level = info\n",
                node.node, node.amqp_port, node.mgmt_port
            ),
        )?;
        std::fs::write(dir.join("enabled_plugins"), "[rabbitmq_management].\n")?;
        std::fs::write(dir.join("advanced.config"), "[].\n")?;
        std::fs::write(
            dir.join("rabbitmq-env.conf"),
            "ERL_EPMD_ADDRESS=127.0.0.1\n\
             export ERL_FLAGS=\"-kernel inet_dist_use_interface {127,0,0,1}\"\n",
        )?;
        let cookie: String = uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        let cookie_path = dir.join(".erlang.cookie");
        std::fs::write(&cookie_path, cookie.to_ascii_uppercase())?;
        chown_tree(dir, "rabbitmq")?;
        // Erlang refuses a cookie file others can read.
        std::fs::set_permissions(
            &cookie_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o400),
        )?;
        Ok(node)
    }

    /// Adds TLS listeners for AMQP and the management API to the node's
    /// configuration (before [`start`](Self::start); the plaintext ones
    /// stay). `ca`, `cert` and `key` are PEM files the `rabbitmq` user can
    /// read; clients are not asked for a certificate.
    pub fn enable_tls(&mut self, ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<()> {
        let (amqps, mgmt) = (free_port()?, free_port()?);
        let (ca, cert, key) = (ca.display(), cert.display(), key.display());
        let conf = format!(
            "listeners.ssl.local = 127.0.0.1:{amqps}\n\
             ssl_options.cacertfile = {ca}\n\
             ssl_options.certfile = {cert}\n\
             ssl_options.keyfile = {key}\n\
             ssl_options.verify = verify_none\n\
             ssl_options.fail_if_no_peer_cert = false\n\
             management.ssl.ip = 127.0.0.1\n\
             management.ssl.port = {mgmt}\n\
             management.ssl.cacertfile = {ca}\n\
             management.ssl.certfile = {cert}\n\
             management.ssl.keyfile = {key}\n"
        );
        let path = self.dir.join("rabbitmq.conf");
        let mut text = std::fs::read_to_string(&path)?;
        text.push_str(&conf);
        std::fs::write(&path, text)?;
        self.amqps_port = Some(amqps);
        self.mgmt_tls_port = Some(mgmt);
        Ok(())
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f` (guest may log in over loopback).
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    pub fn management_url(&self) -> String {
        format!("http://guest:guest@127.0.0.1:{}", self.mgmt_port)
    }

    /// The node's environment, for `env -i` under `runuser`.
    fn env(&self) -> Vec<String> {
        let d = self.dir.display();
        vec![
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin".into(),
            format!("HOME={d}"),
            "LANG=C.UTF-8".into(),
            "LC_ALL=C.UTF-8".into(),
            format!("RABBITMQ_CONF_ENV_FILE={d}/rabbitmq-env.conf"),
            format!("RABBITMQ_NODENAME={}", self.node),
            format!("RABBITMQ_CONFIG_FILE={d}/rabbitmq.conf"),
            format!("RABBITMQ_ADVANCED_CONFIG_FILE={d}/advanced.config"),
            format!("RABBITMQ_ENABLED_PLUGINS_FILE={d}/enabled_plugins"),
            format!("RABBITMQ_MNESIA_BASE={d}/mnesia"),
            format!("RABBITMQ_LOG_BASE={d}/log"),
            format!("RABBITMQ_PID_FILE={d}/pid"),
            format!("RABBITMQ_DIST_PORT={}", self.dist_port),
            format!("RABBITMQ_CTL_DIST_PORT_MIN={}", self.ctl_port),
            format!("RABBITMQ_CTL_DIST_PORT_MAX={}", self.ctl_port + 7),
            "ERL_EPMD_ADDRESS=127.0.0.1".into(),
        ]
    }

    /// `runuser -u rabbitmq -- env -i <node env> <command…>`.
    fn as_rabbitmq(&self, command: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec!["-u".into(), "rabbitmq".into(), "--".into()];
        args.push("env".into());
        args.push("-i".into());
        args.extend(self.env());
        args.extend(command.iter().map(|s| s.to_string()));
        args
    }

    async fn ctl(&self, args: &[&str], what: &str) -> anyhow::Result<String> {
        let ctl = format!("{RMQ_BIN}/rabbitmqctl");
        let mut command = vec![ctl.as_str(), "-n", self.node.as_str(), "-q"];
        command.extend_from_slice(args);
        let full = self.as_rabbitmq(&command);
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        run_cmd("runuser", &refs, what).await
    }

    /// Starts the node and waits until it serves AMQP; returns how long it took.
    pub async fn start(&mut self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        for port in [self.amqp_port, self.mgmt_port, self.dist_port] {
            if port_open(port).await {
                bail!("port {port} for {} is taken by another process", self.node);
            }
        }
        let server = format!("ulimit -n 20000 && exec {RMQ_BIN}/rabbitmq-server -detached");
        let full = self.as_rabbitmq(&["sh", "-c", &server]);
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        self.started = true;
        run_cmd(
            "runuser",
            &refs,
            &format!("starting RabbitMQ node {}", self.node),
        )
        .await?;
        loop {
            let ready = self
                .ctl(&["await_startup", "--timeout", "5"], "awaiting the node")
                .await
                .is_ok();
            let tls_ready = match self.amqps_port {
                Some(port) => port_open(port).await,
                None => true,
            };
            if ready && tls_ready && port_open(self.amqp_port).await {
                return Ok(t.elapsed());
            }
            if t.elapsed() > START_WAIT {
                bail!(
                    "RabbitMQ node {} did not start within {} s; its log: {}",
                    self.node,
                    START_WAIT.as_secs(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Stops the node cleanly and waits until its VM exited.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let pid_file = self.dir.join("pid");
        let pid_file = pid_file.to_string_lossy();
        self.ctl(&["stop", &pid_file], &format!("stopping {}", self.node))
            .await
            .map(|_| ())?;
        self.started = false;
        Ok(())
    }

    /// The node's process id, from its pid file.
    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The end of the node's log, for errors.
    pub fn log_tail(&self) -> String {
        let log = self.dir.join("log").join(format!("{}.log", self.node));
        std::fs::read_to_string(&log)
            .map(|t| last_lines(&t, 15))
            .unwrap_or_else(|_| format!("(no log at {})", log.display()))
    }

    /// Stops the node (killing it if a clean stop fails); for every exit path.
    pub async fn remove(&mut self) {
        if !self.started {
            return;
        }
        if let Err(e) = self.stop().await {
            eprintln!("warning: {e:#}; killing the node");
            if let Some(pid) = self.pid() {
                signal(pid, libc::SIGKILL);
            }
        }
        self.started = false;
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        if !self.started {
            return;
        }
        let ctl = format!("{RMQ_BIN}/rabbitmqctl");
        let pid_file = self.dir.join("pid").to_string_lossy().into_owned();
        let full = self.as_rabbitmq(&[&ctl, "-n", &self.node, "-q", "stop", &pid_file]);
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        if !run_cmd_blocking("runuser", &refs) {
            if let Some(pid) = self.pid() {
                signal(pid, libc::SIGKILL);
            }
        }
    }
}

/// Whether this machine can run a node of ours (root for `runuser`, the package).
pub fn check_available() -> anyhow::Result<()> {
    if !Path::new(RMQ_BIN).join("rabbitmq-server").exists() {
        bail!("rabbitmq-server is not installed (scripts/services.sh installs it)");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the fault suite starts its own RabbitMQ node and PostgreSQL cluster: run it as root"
        );
    }
    std::process::Command::new("id")
        .arg("rabbitmq")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .context("no rabbitmq user: is the rabbitmq-server package installed?")?;
    Ok(())
}
