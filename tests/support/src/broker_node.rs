//! A RabbitMQ node owned by the test process: its own node name, ports, config, data directory,
//! TLS listener (certificates from a throw-away `identity::dev_ca::DevCa`) and management API,
//! started on first use and stopped when the test process exits.
//!
//! The shared broker on 127.0.0.1:5672 is used by everyone's tests at once and runs with
//! `guest`; tests of broker security (users, permissions, AMQPS) need a node whose
//! configuration they own. Booting one takes several seconds, so a test binary shares one
//! ([`BrokerNode::shared`]) and each test imports its own vhost and users
//! ([`BrokerNode::import_definitions`]) and deletes them afterwards.
//!
//! The node is a child of a small `sh` wrapper whose stdin is a pipe from the test process:
//! when the test process exits, however it exits, the pipe closes and the wrapper stops the node
//! (SIGTERM, RabbitMQ's graceful stop) and removes its directory. Nothing is left running.
//!
//! [`BrokerNode::freeze`] stops the node's Erlang VM with SIGSTOP (a broker that keeps its
//! sockets open and answers nothing) and hands back a guard that sends SIGCONT when it is
//! dropped, so a failing test thaws it too while unwinding; if the test process dies with the
//! node frozen, the wrapper sends SIGCONT before SIGTERM (a stopped process does not act on
//! SIGTERM), so it still stops.
//!
//! The node loads a definitions file at boot (so RabbitMQ creates no `guest`) with one
//! account: the harness's administrator, for the management API on loopback.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;

use identity::dev_ca::DevCa;

/// How long a node may take to boot: several seconds on an idle machine, much more on a
/// loaded 2-core CI runner.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// How long the AMQPS listener's certificate is valid: longer than any test process lives.
const CERT_TTL: Duration = Duration::from_secs(24 * 3600);

/// The management account the harness creates.
const ADMIN_USER: &str = "harness-admin";

/// A running RabbitMQ node; see the module documentation.
pub struct BrokerNode {
    node_name: String,
    dir: PathBuf,
    amqp_port: u16,
    amqps_port: u16,
    management_port: u16,
    admin_password: String,
    ca_file: PathBuf,
    started_in: Duration,
    wrapper: Mutex<Option<(Child, ChildStdin)>>,
}

impl std::fmt::Debug for BrokerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerNode")
            .field("node_name", &self.node_name)
            .field("amqp_port", &self.amqp_port)
            .field("amqps_port", &self.amqps_port)
            .field("management_port", &self.management_port)
            .finish_non_exhaustive()
    }
}

impl BrokerNode {
    /// The node of this test process, started by the first caller (the others wait for it).
    /// Panics, with how to install RabbitMQ, when it cannot start.
    pub fn shared() -> &'static BrokerNode {
        static NODE: OnceLock<Result<BrokerNode, String>> = OnceLock::new();
        match NODE.get_or_init(BrokerNode::start) {
            Ok(node) => node,
            Err(why) => panic!("{why}"),
        }
    }

    /// Boots a new node and waits until its management API answers.
    pub fn start() -> Result<BrokerNode, String> {
        let server = find_program("rabbitmq-server")?;
        let started = Instant::now();
        let [amqp_port, amqps_port, management_port, dist_port] =
            <[u16; 4]>::try_from(crate::free_ports(4)).map_err(|_| "four ports".to_owned())?;
        let node_name = format!("vantage-test-{}-{amqp_port}@localhost", std::process::id());
        let dir =
            std::env::temp_dir().join(format!("vantage-broker-{}-{amqp_port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["home", "data", "log", "tls"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| io_error(&dir, e))?;
        }

        let ca = DevCa::new("Vantage test broker CA").map_err(|e| e.to_string())?;
        let server_cert = ca
            .issue_edge(&["localhost", "127.0.0.1"], CERT_TTL)
            .map_err(|e| e.to_string())?;
        let ca_file = dir.join("tls/ca.crt");
        write(&ca_file, ca.bundle_pem())?;
        write(&dir.join("tls/server.crt"), &server_cert.cert_pem)?;
        write(&dir.join("tls/server.key"), &server_cert.key_pem)?;

        let admin_password = random_token();
        let boot = boot_definitions(&admin_password);
        write(&dir.join("boot-definitions.json"), &boot)?;
        let d = dir.display();
        let config = format!(
            "listeners.tcp.1 = 127.0.0.1:{amqp_port}\n\
             listeners.ssl.1 = 127.0.0.1:{amqps_port}\n\
             ssl_options.cacertfile = {d}/tls/ca.crt\n\
             ssl_options.certfile = {d}/tls/server.crt\n\
             ssl_options.keyfile = {d}/tls/server.key\n\
             ssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = false\n\
             ssl_options.versions.1 = tlsv1.3\n\
             ssl_options.versions.2 = tlsv1.2\n\
             management.tcp.ip = 127.0.0.1\n\
             management.tcp.port = {management_port}\n\
             load_definitions = {d}/boot-definitions.json\n\
             log.console = false\n\
             log.file.level = info\n"
        );
        write(&dir.join("rabbitmq.conf"), &config)?;
        write(&dir.join("enabled_plugins"), "[rabbitmq_management].\n")?;
        write(&dir.join("rabbitmq-env.conf"), "")?;

        // Stops the node when our end of its stdin closes: the test process exited or the
        // node was stopped.
        let script = r#"
"$VANTAGE_RABBITMQ_SERVER" >"$VANTAGE_BROKER_DIR/server.log" 2>&1 </dev/null &
server=$!
while read -r _; do :; done
frozen="$VANTAGE_BROKER_DIR/frozen.pid"
if [ -s "$frozen" ]; then kill -CONT "$(cat "$frozen")" 2>/dev/null; fi
kill -TERM "$server" 2>/dev/null
wait "$server"
rm -rf "$VANTAGE_BROKER_DIR"
"#;
        let mut child = Command::new("/bin/sh")
            .args(["-c", script])
            .envs(node_env(&node_name, &dir))
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("VANTAGE_RABBITMQ_SERVER", &server)
            .env("VANTAGE_BROKER_DIR", &dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", server.display()))?;
        let stdin = child.stdin.take().ok_or("no stdin pipe")?;
        let mut node = BrokerNode {
            node_name,
            dir,
            amqp_port,
            amqps_port,
            management_port,
            admin_password,
            ca_file,
            started_in: Duration::ZERO,
            wrapper: Mutex::new(Some((child, stdin))),
        };
        node.wait_booted(started)?;
        node.started_in = started.elapsed();
        Ok(node)
    }

    fn wait_booted(&self, started: Instant) -> Result<(), String> {
        loop {
            if self
                .request("GET", "/api/overview", None)
                .is_ok_and(|(s, _)| s == 200)
            {
                return Ok(());
            }
            let exited = self
                .wrapper
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
                .and_then(|(c, _)| c.try_wait().ok().flatten());
            if exited.is_some() || started.elapsed() > BOOT_TIMEOUT {
                return Err(format!(
                    "the test RabbitMQ node {} did not start within {BOOT_TIMEOUT:?} ({}); \
                     its log:\n{}",
                    self.node_name,
                    exited.map_or("still booting".to_owned(), |s| s.to_string()),
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of the node's logs, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for log in [
            self.dir.join("server.log"),
            self.dir.join("log").join(format!("{}.log", self.node_name)),
        ] {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&lines[lines.len().saturating_sub(30)..].join("\n"));
            out.push('\n');
        }
        out
    }

    /// How long the node took to boot (until its management API answered).
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// Plain AMQP port (127.0.0.1).
    pub fn amqp_port(&self) -> u16 {
        self.amqp_port
    }

    /// AMQPS port (127.0.0.1); the certificate is for `localhost` and `127.0.0.1`.
    pub fn amqps_port(&self) -> u16 {
        self.amqps_port
    }

    /// The PEM file of the CA that signed the AMQPS listener's certificate.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// `amqp://user:password@127.0.0.1:<port>/<vhost>` (vhost percent-encoded).
    pub fn amqp_url(&self, user: &str, password: &str, vhost: &str) -> String {
        format!(
            "amqp://{}:{}@127.0.0.1:{}/{}",
            encode(user),
            encode(password),
            self.amqp_port,
            encode(vhost)
        )
    }

    /// The same over TLS: `amqps://…@localhost:<port>/<vhost>`.
    pub fn amqps_url(&self, user: &str, password: &str, vhost: &str) -> String {
        format!(
            "amqps://{}:{}@localhost:{}/{}",
            encode(user),
            encode(password),
            self.amqps_port,
            encode(vhost)
        )
    }

    /// `http://harness-admin:<password>@127.0.0.1:<port>`: the management API as its
    /// administrator (for code under test that imports definitions itself).
    pub fn management_url(&self) -> String {
        format!(
            "http://{ADMIN_USER}:{}@127.0.0.1:{}",
            self.admin_password, self.management_port
        )
    }

    /// Imports a definitions file (JSON) through the management API; synchronous: everything in
    /// it exists when this returns.
    pub fn import_definitions(&self, json: &str) -> Result<(), String> {
        match self.request("POST", "/api/definitions", Some(json))? {
            (200..=299, _) => Ok(()),
            (status, body) => Err(format!("importing definitions: {status} {body}")),
        }
    }

    /// Deletes a vhost (with its queues, exchanges and permissions); a missing one is fine.
    pub fn delete_vhost(&self, vhost: &str) -> Result<(), String> {
        self.delete(&format!("/api/vhosts/{}", encode(vhost)))
    }

    /// Deletes a user; a missing one is fine.
    pub fn delete_user(&self, user: &str) -> Result<(), String> {
        self.delete(&format!("/api/users/{}", encode(user)))
    }

    /// `GET path` of the management API as JSON text (`/api/queues/<vhost>` …).
    pub fn get(&self, path: &str) -> Result<String, String> {
        match self.request("GET", path, None)? {
            (200, body) => Ok(body),
            (status, body) => Err(format!("GET {path}: {status} {body}")),
        }
    }

    fn delete(&self, path: &str) -> Result<(), String> {
        match self.request("DELETE", path, None)? {
            (200..=299 | 404, _) => Ok(()),
            (status, body) => Err(format!("DELETE {path}: {status} {body}")),
        }
    }

    /// `rabbitmqctl -n <node> args…` against this node, within [`RABBITMQCTL_DEADLINE`].
    pub fn rabbitmqctl(&self, args: &[&str]) -> Result<String, String> {
        let ctl = find_program("rabbitmqctl")?;
        ctl_output(
            Command::new(&ctl)
                .arg("-n")
                .arg(&self.node_name)
                .args(args)
                .envs(node_env(&self.node_name, &self.dir)),
            args,
        )
    }

    /// Stops the node and waits until it is gone (its directory removed). Dropping a node does
    /// the same without waiting; the shared node stops when the test process exits.
    pub fn stop(&self) {
        let taken = self
            .wrapper
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((mut child, stdin)) = taken {
            drop(stdin);
            let _ = child.wait();
        }
    }

    /// Freezes the node: SIGSTOP to its Erlang VM. Its sockets stay open and the kernel still
    /// accepts connections and data, but nothing is answered, as when a broker hangs or sits
    /// behind a network black hole. The node thaws (SIGCONT) when the returned guard is dropped
    /// or [`Frozen::thaw`]ed, and before it is stopped. Do not call the management API or
    /// `rabbitmqctl` while it is frozen: they wait for it.
    pub fn freeze(&self) -> Result<Frozen<'_>, String> {
        let out = self.rabbitmqctl(&["eval", "os:getpid()."])?;
        let pid: i32 = out
            .trim()
            .trim_matches('"')
            .parse()
            .map_err(|_| format!("os:getpid() answered {out:?}"))?;
        let pid = nix::unistd::Pid::from_raw(pid);
        // Written first, so the wrapper can thaw the VM whatever happens to this process.
        let marker = self.dir.join("frozen.pid");
        write(&marker, &pid.to_string())?;
        if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP) {
            let _ = std::fs::remove_file(&marker);
            return Err(format!("SIGSTOP to the RabbitMQ VM ({pid}): {e}"));
        }
        Ok(Frozen {
            pid,
            marker,
            thawed: false,
            _node: std::marker::PhantomData,
        })
    }

    /// One HTTP/1.1 request to the management API as the harness administrator.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.management_port))
            .map_err(|e| format!("management API: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{ADMIN_USER}:{}", self.admin_password));
        let body = body.unwrap_or("");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .map_err(|e| format!("management API: {e}"))?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .map_err(|e| format!("management API: {e}"))?;
        let text = String::from_utf8_lossy(&response);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("management API: not an HTTP response: {text:.200}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }
}

impl Drop for BrokerNode {
    fn drop(&mut self) {
        // Closing the pipe is enough: the wrapper stops the node and removes its directory.
        let _ = self
            .wrapper
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}

/// A node frozen by [`BrokerNode::freeze`]; thaws it when dropped.
#[derive(Debug)]
#[must_use = "the node thaws when this is dropped"]
pub struct Frozen<'a> {
    pid: nix::unistd::Pid,
    /// Tells the wrapper to thaw the VM before stopping it; removed once thawed.
    marker: PathBuf,
    thawed: bool,
    /// Borrowing the node keeps the guard from outliving it.
    _node: std::marker::PhantomData<&'a BrokerNode>,
}

impl Frozen<'_> {
    /// Thaws the node (SIGCONT) now; an error says why the signal failed.
    pub fn thaw(mut self) -> Result<(), String> {
        self.send_cont()
    }

    fn send_cont(&mut self) -> Result<(), String> {
        if std::mem::replace(&mut self.thawed, true) {
            return Ok(());
        }
        let sent = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGCONT)
            .map_err(|e| format!("SIGCONT to the RabbitMQ VM ({}): {e}", self.pid));
        let _ = std::fs::remove_file(&self.marker);
        sent
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.send_cont() {
            eprintln!("{e}");
        }
    }
}

/// The variables that make RabbitMQ's scripts (server and CLI) use this node and nothing of the
/// machine's own broker: its config, data, logs, plugins, and an Erlang cookie in its own home.
fn node_env(node_name: &str, dir: &Path) -> Vec<(&'static str, String)> {
    let d = |p: &str| dir.join(p).display().to_string();
    vec![
        ("HOME", d("home")),
        ("RABBITMQ_NODENAME", node_name.to_owned()),
        ("RABBITMQ_CONF_ENV_FILE", d("rabbitmq-env.conf")),
        ("RABBITMQ_CONFIG_FILE", d("rabbitmq.conf")),
        ("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins")),
        ("RABBITMQ_MNESIA_BASE", d("data")),
        ("RABBITMQ_LOG_BASE", d("log")),
        ("RABBITMQ_PID_FILE", d("rabbitmq.pid")),
        ("ERL_EPMD_ADDRESS", "127.0.0.1".to_owned()),
    ]
}

/// How long one `rabbitmqctl` call may take: each boots an Erlang VM, which takes seconds on a
/// loaded machine and, rarely, hangs; past this the call is killed and fails with a message.
pub const RABBITMQCTL_DEADLINE: Duration = Duration::from_secs(60);

/// `rabbitmqctl args…` against this machine's own RabbitMQ node (the one at the default
/// `AMQP_URL`), within [`RABBITMQCTL_DEADLINE`]. It runs the `rabbitmqctl` on `PATH`: the
/// distribution's wrapper, which switches to the broker's user and so uses its Erlang cookie
/// (a [`BrokerNode`] uses RabbitMQ's own script instead, with the test's cookie).
pub fn rabbitmqctl(args: &[&str]) -> Result<String, String> {
    ctl_output(Command::new("rabbitmqctl").args(args), args)
}

/// Runs a `rabbitmqctl` command: its standard output, or an error with both outputs, or an
/// error once [`RABBITMQCTL_DEADLINE`] has passed (the process is killed).
fn ctl_output(cmd: &mut Command, args: &[&str]) -> Result<String, String> {
    let program = Path::new(cmd.get_program()).display().to_string();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    // Both pipes are drained while the command runs, so a chatty one cannot block it.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut out);
            }
            String::from_utf8_lossy(&out).into_owned()
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + RABBITMQCTL_DEADLINE;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "rabbitmqctl {} did not finish within {RABBITMQCTL_DEADLINE:?}",
                    args.join(" ")
                ));
            }
            Err(e) => return Err(format!("waiting for rabbitmqctl: {e}")),
        }
    };
    let (stdout, stderr) = (
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    );
    if status.success() {
        Ok(stdout)
    } else {
        Err(format!("rabbitmqctl {}: {stdout}{stderr}", args.join(" ")))
    }
}

/// RabbitMQ's scripts themselves, not distribution wrappers that switch to the `rabbitmq` user
/// (Debian's `/usr/sbin/rabbitmq-server` does that when run as root, and that user cannot write
/// the test's directory).
fn find_program(name: &str) -> Result<PathBuf, String> {
    let packaged = Path::new("/usr/lib/rabbitmq/bin").join(name);
    if packaged.is_file() {
        return Ok(packaged);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "{name} not found: tests of broker security start their own RabbitMQ node; \
                 install RabbitMQ (`apt-get install rabbitmq-server`, which .ci/run does)"
            )
        })
}

/// The boot definitions: only the harness administrator (no vhost, no guest).
fn boot_definitions(password: &str) -> String {
    format!(
        r#"{{"users":[{{"name":"{ADMIN_USER}","password":"{password}","tags":["administrator"]}}]}}"#
    )
}

fn random_token() -> String {
    let mut bytes = [0u8; 18];
    aws_lc_rs::rand::fill(&mut bytes).expect("system random");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Percent-encodes everything but unreserved characters (URL user info, vhost, path segment).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| io_error(path, e))
}

fn io_error(path: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_users_vhosts_and_passwords() {
        assert_eq!(encode("t.orders"), "t.orders");
        assert_eq!(encode("/"), "%2F");
        assert_eq!(encode("a b+c"), "a%20b%2Bc");
    }
}
