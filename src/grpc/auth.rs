//! Who is calling.
//!
//! - End users (TeamService): in `dev` mode the `x-user-id` and `x-user-email` metadata, trusted as
//!   sent (loopback use and tests only); in `jwt` mode `authorization: Bearer <JWT>`.
//! - Internal services (AccessService): open in `dev` mode; in `jwt` mode a bearer service token
//!   whose SHA-256 is listed in `--service-tokens-file`, or a TLS client certificate signed by
//!   `--tls-client-ca`.
//!
//! No credential, or one that does not verify, is UNAUTHENTICATED; a good credential of the wrong
//! kind (a user token on AccessService, a service token on TeamService) is PERMISSION_DENIED.
//!
//! These checks read only a call's headers; [`super::identify`] runs them before the call's body
//! is read or any shared resource is taken.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::codegen::http::HeaderMap;

use super::jwt::{JwtVerifier, KeySource};
use crate::config::{AuthMode, Config};
use crate::domain::{Email, UserId};
use crate::error::{Error, ErrorReason};
use crate::service::Actor;

/// Metadata key naming the end user in dev mode.
pub const USER_ID_HEADER: &str = "x-user-id";
/// Metadata key carrying the end user's email in dev mode.
pub const USER_EMAIL_HEADER: &str = "x-user-email";

/// The named hashes of the service tokens allowed to call AccessService.
#[derive(Default)]
pub struct ServiceTokens {
    entries: Vec<(ServiceCaller, [u8; 32])>,
}

impl ServiceTokens {
    /// Parses `NAME SHA256HEX` lines; blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut entries = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(name), Some(hex), None) = (fields.next(), fields.next(), fields.next())
            else {
                bail!("line {}: expected `NAME SHA256HEX`", number + 1);
            };
            let hash = decode_hex(hex).with_context(|| {
                format!("line {}: the hash must be 64 hexadecimal characters", number + 1)
            })?;
            entries.push((ServiceCaller(name.into()), hash));
        }
        Ok(Self { entries })
    }

    /// Reads a tokens file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --service-tokens-file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("--service-tokens-file {}", path.display()))
    }

    /// The name of the service a token belongs to. Every entry is compared, in constant time, so
    /// timing tells nothing about which entry, if any, was close.
    pub fn identify(&self, token: &str) -> Option<&ServiceCaller> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (name, hash) in &self.entries {
            if bool::from(presented.ct_eq(hash)) {
                found = Some(name);
            }
        }
        found
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none are configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn decode_hex(hex: &str) -> anyhow::Result<[u8; 32]> {
    if hex.len() != 64 {
        bail!("wrong length");
    }
    let mut out = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(chunk)?;
        out[i] = u8::from_str_radix(text, 16)?;
    }
    Ok(out)
}

/// A new service token and the line that allows it, for `roster service-token`.
pub fn new_service_token(name: &str) -> anyhow::Result<(String, String)> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("the service name must be a single word");
    }
    let token = crate::service::token::Token::generate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let secret = format!("rst_{}", token.expose());
    let hash: String =
        Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    Ok((secret.clone(), format!("{name} {hash}")))
}

enum UserAuth {
    Dev,
    /// The verifier, and whether a token without `email_verified` counts as verified.
    Jwt(JwtVerifier, bool),
}

/// Identifies callers according to the configured mode.
pub struct Identity {
    users: UserAuth,
    services: ServiceTokens,
    client_certificates: bool,
}

/// The internal service calling AccessService: the name its token is listed under, or how it
/// proved itself otherwise. Shared, so that naming the caller of each call copies nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCaller(pub Arc<str>);

impl std::fmt::Display for ServiceCaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Every call in dev mode.
fn dev_service() -> ServiceCaller {
    static DEV: std::sync::OnceLock<ServiceCaller> = std::sync::OnceLock::new();
    DEV.get_or_init(|| ServiceCaller("dev".into())).clone()
}

/// A caller that presented a client certificate.
fn certificate_service() -> ServiceCaller {
    static CERTIFICATE: std::sync::OnceLock<ServiceCaller> = std::sync::OnceLock::new();
    CERTIFICATE.get_or_init(|| ServiceCaller("tls-client-certificate".into())).clone()
}

impl Identity {
    /// Builds the identity checks from configuration, loading keys and token hashes.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let services = match &config.service_tokens_file {
            Some(path) => ServiceTokens::load(path)?,
            None => ServiceTokens::default(),
        };
        let client_certificates = config.tls_client_ca.is_some();
        let users = match config.auth {
            AuthMode::Dev => UserAuth::Dev,
            AuthMode::Jwt => {
                let source = match (
                    &config.jwt_secret_file,
                    &config.jwt_public_key_file,
                    &config.jwt_jwks_file,
                ) {
                    (Some(path), None, None) => KeySource::Secret(path),
                    (None, Some(path), None) => KeySource::PublicKey(path),
                    (None, None, Some(path)) => KeySource::Jwks(path),
                    _ => bail!(
                        "--auth jwt needs exactly one of --jwt-secret-file, --jwt-public-key-file, --jwt-jwks-file"
                    ),
                };
                let (Some(issuer), Some(audience)) = (&config.jwt_issuer, &config.jwt_audience)
                else {
                    bail!("--auth jwt needs --jwt-issuer and --jwt-audience");
                };
                if services.is_empty() && !client_certificates {
                    bail!(
                        "--auth jwt needs --service-tokens-file or --tls-client-ca, so that services can call AccessService"
                    );
                }
                let allow_missing = config.jwt_allow_missing_email_verified;
                if allow_missing {
                    tracing::warn!(
                        "--jwt-allow-missing-email-verified is set: a JWT without an email_verified \
                         claim counts as proof that its email belongs to its holder"
                    );
                }
                let verifier = JwtVerifier::new(
                    source,
                    issuer.clone(),
                    audience.clone(),
                    config.jwt_leeway_secs,
                )?;
                UserAuth::Jwt(verifier, allow_missing)
            }
        };
        Ok(Self { users, services, client_certificates })
    }

    /// Dev-mode identity, for tests and embedding.
    pub fn dev() -> Self {
        Self {
            users: UserAuth::Dev,
            services: ServiceTokens::default(),
            client_certificates: false,
        }
    }

    /// The end user a TeamService call acts for.
    pub fn actor(&self, metadata: &HeaderMap) -> Result<Actor, Error> {
        match &self.users {
            UserAuth::Dev => dev_actor(metadata),
            UserAuth::Jwt(verifier, allow_missing_email_verified) => {
                let token = bearer(metadata)?;
                if self.services.identify(token).is_some() {
                    return Err(Error::refused(
                        ErrorReason::WrongCredentialKind,
                        "a service token cannot act as an end user; send the user's JWT",
                    ));
                }
                let claims = verifier.verify(token).map_err(invalid_credentials)?;
                let user_id = UserId::parse(&claims.sub)
                    .map_err(|e| invalid_credentials(format!("the token's sub claim {}", e.0)))?;
                let email = match claims.email.as_deref() {
                    None => Err("the token has no email claim".to_owned()),
                    Some(text) => {
                        Email::parse(text).map_err(|e| format!("the token's email claim {e}"))
                    }
                };
                // A missing claim is no proof, unless the operator said their provider omits it;
                // an explicit false never is.
                let email_verified = claims.email_verified.unwrap_or(*allow_missing_email_verified);
                Ok(Actor { user_id, email, email_verified, request_id: None, retry: None })
            }
        }
    }

    /// The internal service calling AccessService. `client_certificate` says whether the TLS
    /// layer verified a client certificate for this connection.
    pub fn service(
        &self,
        metadata: &HeaderMap,
        client_certificate: bool,
    ) -> Result<ServiceCaller, Error> {
        let verifier = match &self.users {
            UserAuth::Dev => return Ok(dev_service()),
            UserAuth::Jwt(verifier, _) => verifier,
        };
        if self.client_certificates && client_certificate {
            return Ok(certificate_service());
        }
        let token = bearer(metadata)?;
        if let Some(name) = self.services.identify(token) {
            return Ok(name.clone());
        }
        if verifier.verify(token).is_ok() {
            return Err(Error::refused(
                ErrorReason::WrongCredentialKind,
                "an end-user token cannot act as a service here; use a service token or a client certificate",
            ));
        }
        Err(invalid_credentials("the bearer token is not a known service token"))
    }
}

fn invalid_credentials(message: impl Into<String>) -> Error {
    Error::refused(ErrorReason::CredentialsInvalid, message)
}

fn bearer(metadata: &HeaderMap) -> Result<&str, Error> {
    let Some(value) = metadata.get("authorization") else {
        return Err(Error::refused(
            ErrorReason::CredentialsMissing,
            "no credentials: send authorization: Bearer <token>",
        ));
    };
    let text = value
        .to_str()
        .map_err(|_| invalid_credentials("the authorization metadata is not printable ASCII"))?;
    match text.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(invalid_credentials("the authorization metadata must be `Bearer <token>`")),
    }
}

/// Reads the actor from dev-mode metadata.
fn dev_actor(metadata: &HeaderMap) -> Result<Actor, Error> {
    let Some(raw) = metadata.get(USER_ID_HEADER) else {
        return Err(Error::refused(
            ErrorReason::CredentialsMissing,
            format!("no caller identity: send the {USER_ID_HEADER} metadata"),
        ));
    };
    let text = raw
        .to_str()
        .map_err(|_| invalid_credentials(format!("{USER_ID_HEADER} must be printable ASCII")))?;
    let user_id = UserId::parse(text)
        .map_err(|e| invalid_credentials(format!("{USER_ID_HEADER} {}", e.0)))?;
    let email = match metadata.get(USER_EMAIL_HEADER) {
        None => Err(format!("no {USER_EMAIL_HEADER} metadata was sent")),
        Some(raw) => {
            // UTF-8, so that dev mode can stand for users of internationalized addresses.
            let text = std::str::from_utf8(raw.as_bytes()).map_err(|_| {
                invalid_credentials(format!("{USER_EMAIL_HEADER} must be UTF-8 text"))
            })?;
            Ok(Email::parse(text)
                .map_err(|e| invalid_credentials(format!("{USER_EMAIL_HEADER} {e}")))?)
        }
    };
    // Dev mode trusts its headers, the email included.
    Ok(Actor { user_id, email, email_verified: true, request_id: None, retry: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_tokens_are_identified_by_their_hash() {
        let (token, line) = new_service_token("billing-api").unwrap();
        let file = format!("# services\n\n{line}\nother {}\n", "0".repeat(64));
        let tokens = ServiceTokens::parse(&file).unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens.identify(&token).map(|c| &*c.0), Some("billing-api"));
        assert_eq!(tokens.identify("rst_guess"), None);
        assert!(!file.contains(&token), "the file holds only the hash");
    }

    #[test]
    fn malformed_token_files_are_refused() {
        assert!(ServiceTokens::parse("name").is_err());
        assert!(ServiceTokens::parse("name abc").is_err());
        assert!(ServiceTokens::parse(&format!("name {} extra", "a".repeat(64))).is_err());
        assert!(ServiceTokens::parse(&format!("name {}", "g".repeat(64))).is_err());
    }
}
