//! TLS on the listener, and client certificates as service identity for AccessService.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use roster::config::AuthMode;
use roster::pb::access_service_client::AccessServiceClient;
use roster::pb::{self};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::common::{Backend, assert_code, spawn_app_with};
use crate::db_tests;

db_tests!(
    services_may_prove_themselves_with_a_client_certificate,
    a_browser_speaking_http1_over_tls_reaches_grpc_web,
    authzen_over_tls_takes_a_client_certificate_as_a_service_credential,
);

struct Pki {
    ca_pem: String,
    server: (String, String),
    client: (String, String),
    rogue_client: (String, String),
}

fn leaf(
    issuer: &CertifiedIssuer<'_, KeyPair>,
    names: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names).unwrap();
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn pki() -> Pki {
    let ca = authority("roster test CA");
    let rogue = authority("someone else's CA");
    Pki {
        ca_pem: ca.pem(),
        server: leaf(&ca, vec!["localhost".into()], ExtendedKeyUsagePurpose::ServerAuth),
        client: leaf(&ca, vec!["billing-api".into()], ExtendedKeyUsagePurpose::ClientAuth),
        rogue_client: leaf(&rogue, vec!["billing-api".into()], ExtendedKeyUsagePurpose::ClientAuth),
    }
}

async fn channel(
    addr: std::net::SocketAddr,
    ca: &str,
    client: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    if let Some((cert, key)) = client {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{addr}")).unwrap().tls_config(tls)?.connect().await
}

/// The server's files in a folder of their own: its identity, the client CA, a JWT secret.
struct MtlsFiles {
    dir: tempfile::TempDir,
}

impl MtlsFiles {
    fn write(pki: &Pki) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("server.pem", pki.server.0.as_str()),
            ("server.key", &pki.server.1),
            ("ca.pem", &pki.ca_pem),
            ("secret", "a-test-secret-of-at-least-thirty-two-bytes"),
        ] {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        MtlsFiles { dir }
    }

    /// Jwt mode, TLS, and client certificates from the test CA as service identity.
    fn apply(&self, config: &mut roster::config::Config) {
        let path = |name: &str| Some(self.dir.path().join(name));
        config.auth = AuthMode::Jwt;
        config.jwt_secret_file = path("secret");
        config.jwt_issuer = Some("https://login.example.com/".into());
        config.jwt_audience = Some("roster".into());
        config.tls_cert = path("server.pem");
        config.tls_key = path("server.key");
        config.tls_client_ca = path("ca.pem");
    }
}

async fn services_may_prove_themselves_with_a_client_certificate(backend: Backend) {
    let pki = pki();
    let files = MtlsFiles::write(&pki);
    let app = spawn_app_with(backend, |config| files.apply(config)).await;
    let check = || pb::AuthorizeRequest {
        consistency: None,
        user_id: "nobody".into(),
        organization_id: "01900000-0000-7000-8000-000000000000".into(),
        workspace_id: String::new(),
        permission: "organization.read".into(),
    };

    // A service with a certificate from the configured CA is identified by it.
    let with_cert = channel(app.addr, &pki.ca_pem, Some(&pki.client)).await.unwrap();
    let decision =
        AccessServiceClient::new(with_cert).authorize(check()).await.unwrap().into_inner();
    assert!(!decision.allowed);
    assert_eq!(decision.reason, pb::DecisionReason::DeniedNotAMember as i32);

    // Without a certificate (and without a token), over TLS: not identified.
    let without = channel(app.addr, &pki.ca_pem, None).await.unwrap();
    assert_code(
        AccessServiceClient::new(without).authorize(check()).await,
        Code::Unauthenticated,
        None,
    );

    // A certificate from another CA does not get through the handshake.
    let rogue = match channel(app.addr, &pki.ca_pem, Some(&pki.rogue_client)).await {
        Err(_) => None,
        Ok(channel) => Some(AccessServiceClient::new(channel).authorize(check()).await),
    };
    if let Some(result) = rogue {
        assert!(result.is_err(), "a foreign client certificate must not be accepted");
    }

    // Plaintext clients cannot talk to the TLS listener.
    let plaintext = app.access.clone().authorize(check()).await;
    assert!(plaintext.is_err());
    app.stop().await;
}

async fn a_browser_speaking_http1_over_tls_reaches_grpc_web(backend: Backend) {
    use http_body_util::BodyExt as _;
    use tokio_rustls::rustls::{self, pki_types::pem::PemObject as _};
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let (cert, key) = (write("server.pem", &pki.server.0), write("server.key", &pki.server.1));
    let app = spawn_app_with(backend, |config| {
        config.tls_cert = Some(cert);
        config.tls_key = Some(key);
    })
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // What a browser or an HTTP/1.1 proxy offers when it will not speak HTTP/2.
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.expect("the handshake agrees on http/1.1");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));

    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    let message = prost::Message::encode_to_vec(&pb::CreateOrganizationRequest {
        display_name: "Acme".into(),
        ..Default::default()
    });
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    let request = hyper::Request::post("/roster.v1.TeamService/CreateOrganization")
        .header("host", "localhost")
        .header("content-type", "application/grpc-web+proto")
        .header("x-user-id", "owner")
        .header("x-user-email", "owner@example.com")
        .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("grpc-status:0"), "{text}");
    assert_eq!(app.count("organizations").await, 1);
    app.stop().await;
}

/// One AuthZEN evaluation over TLS and HTTP/1.1, with `client` as the client certificate;
/// the HTTP status.
async fn authzen_over_tls(
    addr: std::net::SocketAddr,
    ca: &str,
    client: Option<&(String, String)>,
) -> u16 {
    use tokio_rustls::rustls::{self, pki_types::PrivateKeyDer, pki_types::pem::PemObject as _};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(ca.as_bytes()).unwrap()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    // A plain HTTP client, as AuthZEN callers are: HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.expect("the handshake agrees on http/1.1");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    let body = r#"{"subject": {"type": "user", "id": "nobody"}, "action": {"name": "organization.read"},
        "resource": {"type": "organization", "id": "01900000-0000-7000-8000-000000000000"}}"#;
    let request = hyper::Request::post("/access/v1/evaluation")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
        .unwrap();
    sender.send_request(request).await.unwrap().status().as_u16()
}

async fn authzen_over_tls_takes_a_client_certificate_as_a_service_credential(backend: Backend) {
    let pki = pki();
    let files = MtlsFiles::write(&pki);
    let app = spawn_app_with(backend, |config| {
        files.apply(config);
        config.authzen_listen = Some("127.0.0.1:0".parse().unwrap());
        // The main port then offers HTTP/2 only; the AuthZEN port still speaks HTTP/1.1.
        config.grpc_web = false;
    })
    .await;
    let addr = app.authzen_addr.unwrap();
    assert_eq!(authzen_over_tls(addr, &pki.ca_pem, Some(&pki.client)).await, 200);
    assert_eq!(authzen_over_tls(addr, &pki.ca_pem, None).await, 401);
    app.stop().await;
}
