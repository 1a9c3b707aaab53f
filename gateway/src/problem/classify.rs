//! Error classification: what a Pingora error means for the client and for the upstream's
//! health. [`classify`] picks the answer; [`UpstreamErrorKind`] labels a failed attempt.

use pingora_core::{Error, ErrorSource, ErrorType};

use super::GatewayError;

/// How an upstream attempt failed: the `kind` label of `gateway_upstream_errors_total` and
/// `error.type` on the attempt's CLIENT span.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum UpstreamErrorKind {
    /// The TCP connect did not finish within `connect_timeout_ms`.
    ConnectTimeout,
    /// A read or write did not finish within `read_timeout_ms`.
    Timeout,
    /// The endpoint refused the connection.
    ConnectRefused,
    /// Any other connect failure (no route, bind, socket).
    ConnectError,
    /// The upstream closed the connection mid-exchange.
    ConnectionClosed,
    /// The TLS handshake failed: a certificate from another CA, an expired one, no common
    /// protocol.
    TlsHandshake,
    /// The upstream answered something that is not valid HTTP.
    Protocol,
}

impl UpstreamErrorKind {
    /// Classifies a failed attempt.
    pub(crate) fn of(e: &Error) -> Self {
        use ErrorType::*;
        match e.etype() {
            ConnectTimedout | TLSHandshakeTimedout => Self::ConnectTimeout,
            ReadTimedout | WriteTimedout => Self::Timeout,
            ConnectRefused => Self::ConnectRefused,
            ConnectError | ConnectNoRoute | BindError | SocketError => Self::ConnectError,
            ConnectionClosed => Self::ConnectionClosed,
            TLSHandshakeFailure | InvalidCert | HandshakeError => Self::TlsHandshake,
            _ => Self::Protocol,
        }
    }

    /// What the client gets when this was the last attempt: 504 for a timeout, else 502.
    pub(crate) fn answer(self) -> GatewayError {
        match self {
            Self::ConnectTimeout | Self::Timeout => GatewayError::UpstreamTimeout,
            _ => GatewayError::BadGateway,
        }
    }

    /// Stable label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::ConnectTimeout => "connect_timeout",
            Self::Timeout => "timeout",
            Self::ConnectRefused => "connect_refused",
            Self::ConnectError => "connect_error",
            Self::ConnectionClosed => "connection_closed",
            Self::TlsHandshake => "tls_handshake",
            Self::Protocol => "protocol",
        }
    }
}

/// The error to answer a failed request with; `None` when the client went away and there is
/// no one to answer.
pub(crate) fn classify(e: &Error) -> Option<GatewayError> {
    if let Some(gw) = e.root_cause().downcast_ref::<GatewayError>() {
        return Some(gw.clone());
    }
    use ErrorType::*;
    let err = match (e.esource(), e.etype()) {
        (
            ErrorSource::Upstream,
            ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout,
        ) => GatewayError::UpstreamTimeout,
        (ErrorSource::Upstream, _) => GatewayError::BadGateway,
        (
            ErrorSource::Downstream,
            ReadError | WriteError | ConnectionClosed | ReadTimedout | WriteTimedout,
        ) => return None,
        (ErrorSource::Downstream, _) => GatewayError::BadRequest,
        (_, HTTPStatus(400)) => GatewayError::BadRequest,
        _ => GatewayError::Internal,
    };
    Some(err)
}

/// Wraps a [`GatewayError`] so Pingora carries it to `fail_to_proxy`, where [`classify`]
/// finds it again.
pub(crate) fn reject(err: GatewayError) -> Box<Error> {
    Error::because(
        ErrorType::HTTPStatus(err.status()),
        "gateway refused the request",
        err,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_timeouts_are_504_and_other_upstream_failures_502() {
        let timeout = Error::explain(ErrorType::ReadTimedout, "slow").into_up();
        assert!(matches!(
            classify(&timeout),
            Some(GatewayError::UpstreamTimeout)
        ));
        let refused = Error::explain(ErrorType::ConnectRefused, "closed").into_up();
        assert!(matches!(classify(&refused), Some(GatewayError::BadGateway)));
        assert_eq!(
            UpstreamErrorKind::of(&refused),
            UpstreamErrorKind::ConnectRefused
        );
    }

    #[test]
    fn a_client_that_went_away_gets_no_answer() {
        let gone = Error::explain(ErrorType::ConnectionClosed, "bye").into_down();
        assert!(classify(&gone).is_none());
    }

    #[test]
    fn a_gateway_refusal_survives_the_round_trip() {
        let e = reject(GatewayError::NoRoute);
        assert!(matches!(classify(&e), Some(GatewayError::NoRoute)));
    }
}
