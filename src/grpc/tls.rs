//! TLS facts about a call.

use tonic::Request;

/// Whether the connection presented a client certificate that the TLS layer verified. The
/// listener serves plaintext unless TLS is configured, so there is none to check yet.
pub fn has_client_certificate<T>(_request: &Request<T>) -> bool {
    false
}
