//! Checks made before anything starts, so a missing broker or a taken port is one clear
//! line instead of a hang or a child crashing later.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::StackError;

/// How long the broker check waits to connect and for the broker's first frame.
const BROKER_TIMEOUT: Duration = Duration::from_secs(3);

/// The `host:port` an AMQP URL points at (port 5672, or 5671 for amqps, by default).
pub fn amqp_authority(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default_port = if scheme == "amqps" { 5671 } else { 5672 };
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    if host_port.is_empty() {
        return None;
    }
    if let Some(v6) = host_port.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        return Some((host.to_owned(), port));
    }
    match host_port.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), port.parse().ok()?)),
        None => Some((host_port.to_owned(), default_port)),
    }
}

/// Connects to the broker and checks that it speaks AMQP: after the protocol header a
/// broker answers with a method frame (type 1, `connection.start`). No credentials are sent.
/// For `amqps://` only the TCP connection is checked here; the TLS handshake (with the CA
/// bundle) is part of checking the service users ([`crate::broker`]).
pub fn check_broker(amqp_url: &str) -> Result<(), StackError> {
    let tls = amqp_url.starts_with("amqps://");
    let unreachable = |addr: &str, reason: String| StackError::RabbitUnreachable {
        addr: addr.to_owned(),
        reason,
    };
    let Some((host, port)) = amqp_authority(amqp_url) else {
        return Err(unreachable(
            amqp_url,
            "cannot read host and port from AMQP_URL".into(),
        ));
    };
    let shown = format!("{host}:{port}");
    let addrs: Vec<SocketAddr> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| unreachable(&shown, e.to_string()))?
        .collect();
    let mut last = "no address".to_owned();
    for addr in addrs {
        let probed = if tls {
            TcpStream::connect_timeout(&addr, BROKER_TIMEOUT)
                .map(drop)
                .map_err(|e| e.to_string())
        } else {
            probe_amqp(addr)
        };
        match probed {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(unreachable(&shown, last))
}

fn probe_amqp(addr: SocketAddr) -> Result<(), String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, BROKER_TIMEOUT).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(BROKER_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"AMQP\x00\x00\x09\x01")
        .map_err(|e| e.to_string())?;
    let mut first = [0u8; 1];
    match stream.read(&mut first) {
        Ok(1) if first[0] == 1 => Ok(()),
        Ok(0) => Err("the connection was closed without an AMQP greeting".into()),
        Ok(_) => Err("something answers there, but it is not an AMQP 0-9-1 broker".into()),
        Err(e) => Err(format!("no AMQP greeting: {e}")),
    }
}

/// Fails on the first address that cannot be bound, naming who needed it.
pub fn check_ports<'a>(
    wanted: impl IntoIterator<Item = (SocketAddr, &'a str)>,
) -> Result<(), StackError> {
    for (addr, owner) in wanted {
        match TcpListener::bind(addr) {
            Ok(listener) => drop(listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(StackError::PortTaken {
                    port: addr.port(),
                    owner: owner.to_owned(),
                })
            }
            Err(e) => return Err(StackError::io(format!("binding {addr} for {owner}"))(e)),
        }
    }
    Ok(())
}

/// Where `stack` was built: the workspace root and the cargo profile, when the
/// executable sits in `<root>/target/<profile>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildTree {
    pub root: PathBuf,
    pub profile: String,
}

impl BuildTree {
    /// Finds the workspace from the directory holding the binaries.
    pub fn locate(bin_dir: &Path) -> Option<Self> {
        let profile = bin_dir.file_name()?.to_str()?.to_owned();
        let target = bin_dir.parent()?;
        let root = target.parent()?;
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).ok()?;
        manifest.contains("[workspace]").then(|| BuildTree {
            root: root.to_owned(),
            profile,
        })
    }

    /// The `cargo build` arguments that rebuild every binary for this profile.
    pub fn build_args(&self) -> Vec<String> {
        let mut args = vec!["build".to_owned()];
        match self.profile.as_str() {
            "debug" => {}
            "release" => args.push("--release".to_owned()),
            other => args.extend(["--profile".to_owned(), other.to_owned()]),
        }
        args.extend(["--workspace".to_owned(), "--bins".to_owned()]);
        args
    }

    /// Runs `cargo build`, streaming its output to our stderr.
    pub fn build(&self) -> Result<(), StackError> {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let args = self.build_args();
        let command = format!("cargo {}", args.join(" "));
        eprintln!("stack: {command}");
        let status = std::process::Command::new(cargo)
            .args(&args)
            .current_dir(&self.root)
            .status()
            .map_err(StackError::io(format!("running {command}")))?;
        if status.success() {
            Ok(())
        } else {
            Err(StackError::BuildFailed { command, status })
        }
    }
}

/// The path of binary `name` in `bin_dir`, if it exists.
pub fn binary(bin_dir: &Path, name: &str) -> Result<PathBuf, StackError> {
    let path = bin_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if path.is_file() {
        Ok(path)
    } else {
        Err(StackError::MissingBinary { path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqp_urls_give_host_and_port() {
        let a = |u: &str| amqp_authority(u);
        assert_eq!(
            a("amqp://guest:guest@127.0.0.1:5672/%2f"),
            Some(("127.0.0.1".into(), 5672))
        );
        assert_eq!(a("amqp://rabbitmq"), Some(("rabbitmq".into(), 5672)));
        assert_eq!(
            a("amqps://u:p@mq.example:5999/vh"),
            Some(("mq.example".into(), 5999))
        );
        assert_eq!(a("amqps://mq/"), Some(("mq".into(), 5671)));
        assert_eq!(a("amqp://[::1]:5673/%2f"), Some(("::1".into(), 5673)));
        assert_eq!(a("amqp://u:p@host:notaport"), None);
        assert_eq!(a("not a url"), None);
    }

    #[test]
    fn a_closed_port_is_an_unreachable_broker_with_advice() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let err = check_broker(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f")).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, StackError::RabbitUnreachable { .. }),
            "{text}"
        );
        assert!(text.contains("rabbitmq-server -detached"), "{text}");
        assert!(
            !text.contains("guest:guest"),
            "credentials must not be printed: {text}"
        );
    }

    #[test]
    fn a_listener_that_is_not_amqp_is_rejected() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 8];
            s.read_exact(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
        });
        let err = check_broker(&format!("amqp://127.0.0.1:{port}")).unwrap_err();
        assert!(err.to_string().contains("not an AMQP"), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn a_taken_port_is_named() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let err = check_ports([(addr, "cart")]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("port {} (cart)", addr.port())),
            "{text}"
        );
    }

    #[test]
    fn build_tree_maps_profiles_to_cargo_flags() {
        let t = |p: &str| BuildTree {
            root: PathBuf::from("/w"),
            profile: p.into(),
        };
        assert_eq!(t("debug").build_args(), ["build", "--workspace", "--bins"]);
        assert_eq!(
            t("release").build_args(),
            ["build", "--release", "--workspace", "--bins"]
        );
        assert_eq!(
            t("bench").build_args(),
            ["build", "--profile", "bench", "--workspace", "--bins"]
        );
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = here.parent().unwrap().parent().unwrap();
        let found = BuildTree::locate(&root.join("target").join("debug")).unwrap();
        assert_eq!(found.root, root);
        assert_eq!(found.profile, "debug");
        assert_eq!(BuildTree::locate(Path::new("/usr/bin")), None);
    }
}
