//! What Vantage reads from an X.509 certificate: its SPIFFE ID, validity, subject and serial.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::extensions::GeneralName;

use crate::spiffe_id::{SpiffeId, SpiffeIdError};

/// Why a certificate does not name a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("not a DER X.509 certificate")]
    NotX509,
    #[error("no spiffe:// URI SAN")]
    NoSpiffeId,
    #[error("{0} URI SANs (an SVID has exactly one)")]
    ManyUris(usize),
    #[error("URI SAN is not a valid SPIFFE ID: {0}")]
    BadSpiffeId(SpiffeIdError),
}

/// The facts of one certificate that Vantage uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The SPIFFE ID when the certificate has exactly one URI SAN and it is one.
    pub spiffe_id: Result<SpiffeId, CertError>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// RFC 4514 form (`CN=orders`); may be empty (SVIDs need no subject).
    pub subject: String,
    /// Hex, colon-separated, as `openssl x509 -serial` prints it (without the `serial=`).
    pub serial: String,
    pub is_ca: bool,
}

impl CertInfo {
    /// Parses `der`.
    pub fn parse(der: &[u8]) -> Result<CertInfo, CertError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| CertError::NotX509)?;
        let uris: Vec<&str> = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(_) => return Err(CertError::NotX509),
        };
        let spiffe_id = match uris.as_slice() {
            [] => Err(CertError::NoSpiffeId),
            [one] if !one.starts_with("spiffe://") => Err(CertError::NoSpiffeId),
            [one] => one.parse().map_err(CertError::BadSpiffeId),
            many => Err(CertError::ManyUris(many.len())),
        };
        let validity = cert.validity();
        Ok(CertInfo {
            spiffe_id,
            not_before: system_time(validity.not_before.timestamp()),
            not_after: system_time(validity.not_after.timestamp()),
            subject: cert.subject().to_string(),
            serial: cert.raw_serial_as_string(),
            is_ca: cert.is_ca(),
        })
    }
}

/// The SPIFFE ID of a DER certificate (a peer's leaf certificate, as rustls or OpenSSL hand it
/// over): its one URI SAN, which must be a valid `spiffe://` ID.
pub fn spiffe_id_of(cert_der: &[u8]) -> Result<SpiffeId, CertError> {
    CertInfo::parse(cert_der)?.spiffe_id
}

fn system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

/// `t` as RFC 3339 in UTC, to the second (`2026-05-01T12:00:00Z`), for messages and spans.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{secs}"))
}
