//! Checks made before anything starts, so a missing broker or a taken port is one clear
//! line instead of a hang or a child crashing later.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::StackError;

/// How long the broker check waits to connect and for the broker's first frame.
const BROKER_TIMEOUT: Duration = Duration::from_secs(3);

/// Checks that a broker speaking AMQP answers at `amqp_url` ([`messaging::probe::greet`]).
/// No credentials are sent, and none are shown in the error.
pub fn check_broker(amqp_url: &str) -> Result<(), StackError> {
    messaging::probe::greet(amqp_url, BROKER_TIMEOUT).map_err(|e| StackError::RabbitUnreachable {
        addr: e.address().to_owned(),
        reason: e.reason().to_owned(),
    })
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
        let server = test_support::OneShotServer::start(8, b"HTTP/1.1 400 Bad Request\r\n\r\n");
        let err = check_broker(&format!("amqp://127.0.0.1:{}", server.port)).unwrap_err();
        assert!(err.to_string().contains("not an AMQP"), "{err}");
        server.join();
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
