//! `edge_tls` (what the public TLS listener serves) and each upstream's `tls` (mutual TLS with
//! SPIFFE IDs). Certificate files are read and checked here, so `gateway validate` names the
//! file and the reason for a bad one, and a reload with a bad file keeps the old policy.

use std::path::Path;

use super::super::raw::{RawEdgeTls, RawUpstreamTls};
use super::super::{EdgeTlsConfig, SvidConfig, UpstreamTlsConfig};
use super::Errors;

pub(super) fn edge(
    errs: &mut Errors,
    raw: Option<serde_yaml::Value>,
    base_dir: &Path,
) -> Option<EdgeTlsConfig> {
    let raw = match raw {
        None | Some(serde_yaml::Value::Null) => return None,
        Some(v) => errs.section::<RawEdgeTls>("edge_tls", v)?,
    };
    let RawEdgeTls {
        cert_file,
        key_file,
        redirect_http,
        hsts_max_age_secs,
    } = raw;
    let config = EdgeTlsConfig {
        cert_file: base_dir.join(cert_file),
        key_file: base_dir.join(key_file),
        redirect_http: redirect_http.unwrap_or(false),
        hsts_max_age_secs: hsts_max_age_secs.unwrap_or(0),
    };
    if let Err(e) = crate::tls::EdgeCert::load(&config.cert_file, &config.key_file) {
        errs.push("edge_tls", e);
    }
    Some(config)
}

pub(super) fn upstream(
    errs: &mut Errors,
    loc: &str,
    upstream: &str,
    raw: RawUpstreamTls,
    base_dir: &Path,
) -> Option<UpstreamTlsConfig> {
    let RawUpstreamTls {
        svid_dir,
        cert_file,
        key_file,
        bundle_file,
        workload_api,
        spiffe_ids,
        server_name,
    } = raw;
    let svid = match (svid_dir, cert_file, key_file, bundle_file, workload_api) {
        (Some(dir), None, None, None, None) => {
            match identity::SvidPaths::detect(&base_dir.join(dir)) {
                Ok(paths) => SvidConfig::files(paths),
                Err(e) => {
                    errs.push(format!("{loc}.svid_dir"), e.to_string());
                    return None;
                }
            }
        }
        (None, Some(cert), Some(key), Some(bundle), None) => {
            SvidConfig::files(identity::SvidPaths {
                cert: base_dir.join(cert),
                key: base_dir.join(key),
                bundle: base_dir.join(bundle),
            })
        }
        (None, None, None, None, Some(endpoint)) => {
            if let Err(e) = identity::SvidSource::workload_api(&endpoint) {
                errs.push(format!("{loc}.workload_api"), e.to_string());
                return None;
            }
            SvidConfig::WorkloadApi { endpoint }
        }
        _ => {
            errs.push(
                loc,
                "set svid_dir, all of cert_file, key_file and bundle_file, or workload_api",
            );
            return None;
        }
    };
    if spiffe_ids.is_empty() {
        errs.push(
            format!("{loc}.spiffe_ids"),
            "list the SPIFFE IDs the upstream may present, e.g. [spiffe://vantage.local/orders]",
        );
    }
    for (i, id) in spiffe_ids.iter().enumerate() {
        if let Err(e) = id.parse::<identity::SpiffeId>() {
            errs.push(format!("{loc}.spiffe_ids[{i}]"), format!("{id:?}: {e}"));
        }
    }
    // Files are checked now; an SVID from the Workload API when the policy is applied (the
    // agent gives one only to the running gateway).
    if let Some(paths) = svid.paths() {
        if let Err(e) = identity::Svid::load(&paths) {
            errs.push(loc, e.to_string());
        }
    }
    Some(UpstreamTlsConfig {
        svid,
        spiffe_ids,
        server_name: server_name.unwrap_or_else(|| upstream.to_string()),
    })
}
