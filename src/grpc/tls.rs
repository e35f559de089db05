//! TLS on the listener: the server's certificate, and optional client certificates that
//! services may present instead of a token.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;

use crate::config::Config;

/// Accepts TLS connections with the configured identity.
#[derive(Clone)]
pub struct TlsAcceptor(tokio_rustls::TlsAcceptor);

impl TlsAcceptor {
    /// The listener's TLS settings, if TLS is configured. Client certificates are optional (end
    /// users connect without one) but, when presented, must be signed by --tls-client-ca: the
    /// handshake fails otherwise, so a connection that has one holds a verified one.
    pub fn from_config(config: &Config) -> anyhow::Result<Option<Self>> {
        let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
            return Ok(None);
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = match &config.tls_client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(ca, "--tls-client-ca")? {
                    roots.add(cert).context("--tls-client-ca holds an unusable certificate")?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .allow_unauthenticated()
                        .build()
                        .context("--tls-client-ca")?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let key = PrivateKeyDer::from_pem_file(key).with_context(|| {
            format!(
                "--tls-key {}: no PEM private key (PKCS#8, PKCS#1 or SEC1) found",
                key.display()
            )
        })?;
        let mut server = builder
            .with_single_cert(certificates(cert, "--tls-cert")?, key)
            .context("--tls-cert and --tls-key do not form a usable identity")?;
        server.alpn_protocols = vec![b"h2".to_vec()];
        // Browsers and HTTP/1.1 proxies negotiate gRPC-Web over HTTP/1.1; a client offering only
        // that would otherwise fail the handshake.
        if config.grpc_web {
            server.alpn_protocols.push(b"http/1.1".to_vec());
        }
        Ok(Some(Self(tokio_rustls::TlsAcceptor::from(Arc::new(server)))))
    }

    /// The same identity offering HTTP/1.1 besides HTTP/2, for a listener of plain HTTP
    /// clients (the AuthZEN API) whatever the main port offers.
    pub fn with_http1(&self) -> Self {
        let mut server = ServerConfig::clone(self.0.config());
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
    }

    /// Runs the server's side of a handshake.
    pub async fn accept(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        self.0.accept(stream).await
    }
}

fn certificates(path: &Path, flag: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read {flag} {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{flag} {}: not a PEM certificate file", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{flag} {} holds no certificate", path.display());
    }
    Ok(certs)
}
