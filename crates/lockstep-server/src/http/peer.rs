//! The identity a client proved with a TLS client certificate.

/// The names of a client certificate verified against `LOCKSTEP_TLS_CLIENT_CA`:
/// subject CN first, then DNS SANs. The listener inserts it into the request
/// extensions of every request on that connection (absent without mutual TLS
/// or when the client sent no certificate); the authentication layer decides
/// what the names mean (e.g. a VIN as the CN of a device certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    pub names: Vec<String>,
}
