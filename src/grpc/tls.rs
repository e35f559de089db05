//! TLS facts about a call.

use tonic::Request;

/// Whether the connection presented a client certificate. The TLS layer accepts one only when it
/// chains to --tls-client-ca, so presence means a verified service.
pub fn has_client_certificate<T>(request: &Request<T>) -> bool {
    request.peer_certs().is_some_and(|certs| !certs.is_empty())
}
