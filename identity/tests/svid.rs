//! Loading SVIDs from files the development CA writes: what loads, and that every bad file is
//! named with its reason.

use std::time::{Duration, SystemTime};

use identity::dev_ca::{DevCa, DEFAULT_SVID_TTL};
use identity::{Layout, Reload, SpiffeId, Svid, SvidPaths, SvidProblem, WorkloadIdentity};

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

const ORDERS: &str = "spiffe://vantage.local/orders";

#[test]
fn a_written_svid_loads_with_its_id_expiry_and_bundle() {
    let ca = DevCa::new("test CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let paths = ca
        .write_svid(dir.path(), &id(ORDERS), DEFAULT_SVID_TTL)
        .unwrap();
    assert_eq!(paths, SvidPaths::in_dir(dir.path(), Layout::CsiDriver));
    assert_eq!(SvidPaths::detect(dir.path()).unwrap(), paths);
    let svid = Svid::load(&paths).unwrap();
    assert_eq!(svid.spiffe_id().as_str(), ORDERS);
    let left = svid.not_after().duration_since(SystemTime::now()).unwrap();
    assert!(
        left > Duration::from_secs(23 * 3600) && left <= DEFAULT_SVID_TTL,
        "{left:?}"
    );
    assert_eq!(svid.bundle().len(), 1);
    assert_eq!(svid.cert_chain().len(), 1);
    let debug = format!("{svid:?}");
    assert!(
        debug.contains(ORDERS) && !debug.contains("PRIVATE"),
        "{debug}"
    );

    let key = std::fs::metadata(&paths.key).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        key.permissions().mode() & 0o777,
        0o600,
        "the key is private"
    );
}

#[test]
fn the_spiffe_helper_layout_loads_too() {
    let ca = DevCa::new("test CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let issued = ca.issue_svid(&id(ORDERS), DEFAULT_SVID_TTL).unwrap();
    let paths = issued
        .write(dir.path(), Layout::SpiffeHelper, ca.bundle_pem())
        .unwrap();
    assert!(paths.cert.ends_with("svid.pem"));
    let detected = SvidPaths::detect(dir.path()).unwrap();
    assert_eq!(detected, paths);
    assert_eq!(Svid::load(&detected).unwrap().spiffe_id().as_str(), ORDERS);
}

/// Writes a good SVID, lets `spoil` damage one file, and returns the load error's text.
fn load_error(spoil: impl FnOnce(&DevCa, &SvidPaths)) -> (SvidPaths, identity::SvidError) {
    let ca = DevCa::new("test CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let paths = ca
        .write_svid(dir.path(), &id(ORDERS), DEFAULT_SVID_TTL)
        .unwrap();
    spoil(&ca, &paths);
    let e = Svid::load(&paths).unwrap_err();
    // The paths are only compared from here on.
    drop(dir);
    (paths, e)
}

#[test]
fn every_bad_file_is_named_with_the_reason() {
    let (p, e) = load_error(|_, p| std::fs::remove_file(&p.cert).unwrap());
    assert_eq!(e.file, p.cert);
    assert!(matches!(e.problem, SvidProblem::Read(_)), "{e}");

    let (p, e) = load_error(|_, p| std::fs::write(&p.cert, "hello").unwrap());
    assert_eq!(
        e.to_string(),
        format!("{}: not a PEM certificate", p.cert.display())
    );

    let (p, e) = load_error(|_, p| std::fs::write(&p.key, "-----BEGIN NOTHING-----").unwrap());
    assert_eq!(
        e.to_string(),
        format!("{}: not a PEM private key", p.key.display())
    );

    let (p, e) = load_error(|_, p| std::fs::write(&p.bundle, "").unwrap());
    assert_eq!(
        e.to_string(),
        format!("{}: not a PEM certificate", p.bundle.display())
    );

    // The key of another SVID.
    let (p, e) = load_error(|ca, p| {
        let other = ca.issue_svid(&id(ORDERS), DEFAULT_SVID_TTL).unwrap();
        std::fs::write(&p.key, other.key_pem).unwrap();
    });
    assert_eq!(
        e.to_string(),
        format!(
            "{}: does not match the certificate in {}",
            p.key.display(),
            p.cert.display()
        )
    );

    // Expired an hour ago.
    let (p, e) = load_error(|ca, p| {
        let now = SystemTime::now();
        let old = ca
            .issue_svid_valid(
                &id(ORDERS),
                now - Duration::from_secs(7200),
                now - Duration::from_secs(3600),
            )
            .unwrap();
        old.write(p.cert.parent().unwrap(), Layout::CsiDriver, ca.bundle_pem())
            .unwrap();
    });
    assert_eq!(e.file, p.cert);
    assert!(e.to_string().contains(": expired at 20"), "{e}");

    // A server certificate without a SPIFFE ID.
    let (p, e) = load_error(|ca, p| {
        let edge = ca.issue_edge(&["localhost"], DEFAULT_SVID_TTL).unwrap();
        edge.write(p.cert.parent().unwrap(), Layout::CsiDriver, ca.bundle_pem())
            .unwrap();
    });
    assert_eq!(
        e.to_string(),
        format!("{}: no spiffe:// URI SAN", p.cert.display())
    );

    // The CA's own certificate is no SVID (and has no URI SAN either).
    let (_, e) = load_error(|ca, p| std::fs::write(&p.cert, ca.bundle_pem()).unwrap());
    assert!(
        matches!(e.problem, SvidProblem::Certificate(_) | SvidProblem::IsCa),
        "{e}"
    );

    // Issued by a CA that is not in the bundle.
    let (p, e) = load_error(|_, p| {
        let stranger = DevCa::new("someone else").unwrap();
        std::fs::write(&p.bundle, stranger.bundle_pem()).unwrap();
    });
    assert_eq!(e.file, p.cert);
    assert!(
        e.to_string()
            .contains(&format!("not issued by a CA in {}", p.bundle.display())),
        "{e}"
    );
}

#[test]
fn a_workload_identity_refuses_another_trust_domain() {
    let ca = DevCa::new("test CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let paths = ca
        .write_svid(
            dir.path(),
            &id("spiffe://elsewhere.test/orders"),
            DEFAULT_SVID_TTL,
        )
        .unwrap();
    let e = WorkloadIdentity::load(&paths, Some(&identity::TrustDomain::default())).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: SPIFFE ID spiffe://elsewhere.test/orders is not in trust domain vantage.local",
            paths.cert.display()
        )
    );
}

#[test]
fn changed_files_rotate_and_broken_ones_keep_the_old_svid() {
    let ca = DevCa::new("test CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let paths = ca
        .write_svid(dir.path(), &id(ORDERS), DEFAULT_SVID_TTL)
        .unwrap();
    let wi = WorkloadIdentity::load(&paths, None).unwrap();
    let mut changes = wi.subscribe();
    let first = wi.current().serial().to_owned();
    assert!(matches!(wi.reload().unwrap(), Reload::Unchanged));

    ca.write_svid(dir.path(), &id(ORDERS), DEFAULT_SVID_TTL)
        .unwrap();
    let Reload::Rotated(svid) = wi.reload().unwrap() else {
        panic!("new files are a rotation")
    };
    assert_ne!(svid.serial(), first);
    assert_eq!(wi.current().serial(), svid.serial());
    assert!(changes.has_changed().unwrap());
    assert_eq!(changes.borrow_and_update().serial(), svid.serial());

    // Half a rotation: a new key without its certificate.
    let other = ca.issue_svid(&id(ORDERS), DEFAULT_SVID_TTL).unwrap();
    std::fs::write(&paths.key, &other.key_pem).unwrap();
    let e = wi.reload().unwrap_err();
    assert_eq!(e.file, paths.key);
    assert_eq!(wi.current().serial(), svid.serial(), "the old SVID stays");
    assert!(
        matches!(wi.reload().unwrap(), Reload::Unchanged),
        "not retried until the files change"
    );
    // ...and the certificate arrives.
    std::fs::write(&paths.cert, &other.cert_pem).unwrap();
    let Reload::Rotated(done) = wi.reload().unwrap() else {
        panic!("the completed set loads")
    };
    assert_ne!(done.serial(), svid.serial());
}

#[tokio::test]
async fn watch_picks_up_new_files_and_stops_on_shutdown() {
    let ca = DevCa::new("test CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let paths = ca
        .write_svid(dir.path(), &id(ORDERS), DEFAULT_SVID_TTL)
        .unwrap();
    let wi = WorkloadIdentity::load(&paths, None).unwrap();
    let first = wi.current().serial().to_owned();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(
        wi.clone()
            .watch(Duration::from_millis(20), shutdown.clone()),
    );
    let mut changes = wi.subscribe();
    ca.write_svid(dir.path(), &id(ORDERS), DEFAULT_SVID_TTL)
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), changes.changed())
        .await
        .expect("the watcher loads the new SVID")
        .unwrap();
    assert_ne!(wi.current().serial(), first);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("watch returns on shutdown")
        .unwrap();
}

#[test]
fn a_saved_ca_is_loaded_again_and_an_expiring_one_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, new) = DevCa::load_or_create(dir.path(), "dev", Duration::from_secs(3600)).unwrap();
    assert!(new);
    let (again, new) = DevCa::load_or_create(dir.path(), "dev", Duration::from_secs(3600)).unwrap();
    assert!(!new);
    assert_eq!(again.bundle_pem(), ca.bundle_pem());
    // The reloaded CA issues SVIDs that chain to the saved certificate.
    let svid_dir = dir.path().join("orders");
    let paths = again
        .write_svid(&svid_dir, &id(ORDERS), DEFAULT_SVID_TTL)
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(&paths.bundle).unwrap(),
        ca.bundle_pem()
    );
    Svid::load(&paths).unwrap();
    // A CA with less time left than asked for is replaced.
    let (replaced, new) =
        DevCa::load_or_create(dir.path(), "dev", Duration::from_secs(365 * 24 * 3600)).unwrap();
    assert!(new);
    assert_ne!(replaced.bundle_pem(), ca.bundle_pem());
}
