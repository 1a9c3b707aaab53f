//! The stack's trust domain: a development CA (`identity::dev_ca`, rcgen) and one X.509 SVID
//! per workload (the gateway and each service), plus the certificate of the gateway's public
//! TLS listener, all in `<run dir>/pki/`:
//!
//! ```text
//! pki/ca.crt, pki/ca.key            the CA (kept across runs while it has > 2 days left)
//! pki/svid/<workload>/tls.crt …     each workload's SVID (csi-driver-spiffe layout), where its
//!                                   SVID_DIR points; spiffe://vantage.local/<workload>
//! pki/edge/tls.crt, tls.key         the public TLS listener's certificate (localhost, 127.0.0.1)
//! ```
//!
//! SVIDs are issued fresh at every start with [`SVID_TTL`] and re-issued by [`Pki::renew`] when
//! half of that has passed; the workloads pick the new files up without a restart. Nothing is
//! downloaded, and the keys never leave the run directory (mode 0600).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use identity::dev_ca::DevCa;
use identity::SpiffeId;
use tokio_util::sync::CancellationToken;

use crate::contract::{Workload, TRUST_DOMAIN};
use crate::StackError;

/// Lifetime of the SVIDs the stack issues.
pub const SVID_TTL: Duration = Duration::from_secs(24 * 3600);
/// Lifetime of the edge certificate.
const EDGE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// A CA with less than this left is replaced at start.
const CA_MIN_REMAINING: Duration = Duration::from_secs(2 * 24 * 3600);
/// How often [`Pki::renew`] looks at the SVIDs' age.
const RENEW_CHECK: Duration = Duration::from_secs(60);

/// Where the stack's certificates are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiPaths {
    /// `<run dir>/pki`.
    pub dir: PathBuf,
    /// The trust bundle (`pki/ca.crt`): what `curl --cacert` and every workload trust.
    pub ca_file: PathBuf,
    /// The edge certificate and key of the gateway's TLS listener.
    pub edge_cert: PathBuf,
    pub edge_key: PathBuf,
}

impl PkiPaths {
    /// The directory of `workload`'s SVID (its `SVID_DIR`).
    pub fn svid_dir(&self, workload: &str) -> PathBuf {
        self.dir.join("svid").join(workload)
    }
}

/// The stack's CA and the certificates it issued.
pub struct Pki {
    ca: DevCa,
    pub paths: PkiPaths,
    issued_at: SystemTime,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

impl Pki {
    /// Loads or creates the CA in `<run_dir>/pki` and issues every workload's SVID and the edge
    /// certificate.
    pub fn prepare(run_dir: &Path) -> Result<Pki, StackError> {
        let dir = run_dir.join("pki");
        let (ca, _) = DevCa::load_or_create(&dir, "Vantage stack development CA", CA_MIN_REMAINING)
            .map_err(certs_error)?;
        let pki = Pki {
            paths: PkiPaths {
                ca_file: dir.join("ca.crt"),
                edge_cert: dir.join("edge/tls.crt"),
                edge_key: dir.join("edge/tls.key"),
                dir,
            },
            ca,
            issued_at: SystemTime::now(),
        };
        pki.issue_svids()?;
        let edge = pki
            .ca
            .issue_edge(&["localhost", "127.0.0.1"], EDGE_TTL)
            .map_err(certs_error)?;
        edge.write(
            &pki.paths.dir.join("edge"),
            identity::Layout::CsiDriver,
            pki.ca.bundle_pem(),
        )
        .map_err(certs_error)?;
        Ok(pki)
    }

    /// The SPIFFE ID of `workload` in the stack's trust domain.
    pub fn spiffe_id(workload: &str) -> String {
        format!("spiffe://{TRUST_DOMAIN}/{workload}")
    }

    fn issue_svids(&self) -> Result<(), StackError> {
        for w in Workload::ALL {
            let id: SpiffeId = Pki::spiffe_id(w.name())
                .parse()
                .expect("workload names are valid SPIFFE paths");
            self.ca
                .write_svid(&self.paths.svid_dir(w.name()), &id, SVID_TTL)
                .map_err(certs_error)?;
        }
        Ok(())
    }

    /// Re-issues every SVID when half of [`SVID_TTL`] has passed, until `shutdown`.
    pub async fn renew(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(RENEW_CHECK);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let age = self.issued_at.elapsed().unwrap_or_default();
            if age < SVID_TTL / 2 {
                continue;
            }
            match self.issue_svids() {
                Ok(()) => {
                    self.issued_at = SystemTime::now();
                    println!("stack: re-issued the SVIDs in {}", self.paths.dir.display());
                }
                Err(e) => eprintln!("stack: warning: cannot re-issue the SVIDs: {e}"),
            }
        }
    }
}

fn certs_error(e: identity::dev_ca::DevCaError) -> StackError {
    StackError::Certs(e.to_string())
}

/// `stack certs`: writes the trust domain's CA, every workload's SVID and the edge certificate
/// into a directory, for compose (a one-shot container) or any run without `stack`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "stack certs",
    about = "Create a development trust domain: a CA, one SVID per workload (gateway and each \
             service, spiffe://vantage.local/<workload>, 24 h) and the gateway's edge \
             certificate, in DIR/pki/. Keeps a CA with more than 2 days left; always issues \
             new SVIDs. Nothing is downloaded."
)]
pub struct CertsOptions {
    /// The directory to write `pki/` into.
    #[arg(long, default_value = ".stack")]
    pub out: PathBuf,
}

/// Runs `stack certs` with `args` (after the subcommand).
pub fn main(args: impl IntoIterator<Item = String>) -> std::process::ExitCode {
    use clap::Parser as _;
    let options =
        match CertsOptions::try_parse_from(std::iter::once("stack certs".to_owned()).chain(args)) {
            Ok(o) => o,
            Err(e) => {
                let _ = e.print();
                return std::process::ExitCode::from(if e.use_stderr() { 2 } else { 0 });
            }
        };
    match Pki::prepare(&options.out) {
        Ok(pki) => {
            let p = &pki.paths;
            println!("CA (trust bundle)  {}", p.ca_file.display());
            for w in Workload::ALL {
                println!(
                    "{:<18} {} ({})",
                    w.name(),
                    p.svid_dir(w.name()).display(),
                    Pki::spiffe_id(w.name())
                );
            }
            println!(
                "edge certificate   {}, {}",
                p.edge_cert.display(),
                p.edge_key.display()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stack certs: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
