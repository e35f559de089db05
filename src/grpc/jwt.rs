//! End-user identity from a JWT: signature (HS256 secret, a PEM public key, or a JWKS with keys
//! chosen by `kid`), `exp` and `nbf` with a small leeway, `iss` and `aud`.

use std::path::Path;

use anyhow::{Context as _, bail};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::Value;

/// The claims Roster reads.
#[derive(Debug)]
pub struct Claims {
    pub sub: String,
    pub email: Option<String>,
    /// Whether the identity provider verified the email.
    pub email_verified: Option<bool>,
}

impl Claims {
    /// Reads the claims from the token's payload, naming the claim that is not of its type
    /// (a generic "cannot be read" leaves the identity provider's operator guessing).
    fn from_payload(payload: &serde_json::Map<String, Value>) -> Result<Self, String> {
        let sub = match payload.get("sub") {
            Some(Value::String(sub)) => sub.clone(),
            None => return Err("the token has no sub claim".to_owned()),
            Some(_) => return Err("the token's sub claim must be a string".to_owned()),
        };
        let email = match payload.get("email") {
            None | Some(Value::Null) => None,
            Some(Value::String(email)) => Some(email.clone()),
            Some(_) => return Err("the token's email claim must be a string".to_owned()),
        };
        // Some identity providers (Amazon Cognito, for one) send the flag as a string.
        let email_verified = match payload.get("email_verified") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(verified)) => Some(*verified),
            Some(Value::String(text)) if text == "true" => Some(true),
            Some(Value::String(text)) if text == "false" => Some(false),
            Some(_) => {
                return Err("the token's email_verified claim must be true or false".to_owned());
            }
        };
        Ok(Self { sub, email, email_verified })
    }
}

/// Reads an HS256 secret file: its bytes as they are, but for one line ending at the end
/// (which `echo` and editors add, and an identity provider given the same text would not sign
/// with). Nothing else is trimmed, so a secret may hold any bytes.
pub fn read_secret_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut secret = std::fs::read(path)
        .with_context(|| format!("cannot read --jwt-secret-file {}", path.display()))?;
    if secret.ends_with(b"\r\n") {
        secret.truncate(secret.len() - 2);
    } else if secret.ends_with(b"\n") {
        secret.truncate(secret.len() - 1);
    }
    if secret.len() < 32 {
        bail!("--jwt-secret-file must hold at least 32 bytes of secret for HS256");
    }
    Ok(secret)
}

/// Signs a token for a development or test server in jwt mode, with the HS256 secret of
/// `--jwt-secret-file`: what `roster dev-token` prints. Never a production identity provider.
pub fn sign_dev_token(
    secret: &[u8],
    issuer: &str,
    audience: &str,
    claims: &Claims,
    lifetime: std::time::Duration,
) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let mut payload = serde_json::json!({
        "sub": claims.sub,
        "iss": issuer,
        "aud": audience,
        "iat": now,
        "nbf": now,
        "exp": now.saturating_add(lifetime.as_secs()),
    });
    if let Some(email) = &claims.email {
        payload["email"] = Value::from(email.as_str());
    }
    if let Some(verified) = claims.email_verified {
        payload["email_verified"] = Value::from(verified);
    }
    let header = jsonwebtoken::Header::new(Algorithm::HS256);
    Ok(jsonwebtoken::encode(&header, &payload, &jsonwebtoken::EncodingKey::from_secret(secret))?)
}

/// One key and the only algorithm it is accepted with, so a token cannot pick a weaker one.
struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Verifies end-user tokens.
pub struct JwtVerifier {
    keys: Vec<Key>,
    issuer: String,
    audience: String,
    leeway_secs: u64,
}

/// Where the verification keys come from.
pub enum KeySource<'a> {
    /// An HS256 shared secret in a file.
    Secret(&'a Path),
    /// A PEM public key (RSA, P-256 EC or Ed25519).
    PublicKey(&'a Path),
    /// A JWKS document.
    Jwks(&'a Path),
}

impl JwtVerifier {
    /// Loads the keys.
    pub fn new(
        source: KeySource<'_>,
        issuer: String,
        audience: String,
        leeway_secs: u64,
    ) -> anyhow::Result<Self> {
        let keys = match source {
            KeySource::Secret(path) => {
                let secret = read_secret_file(path)?;
                vec![Key {
                    kid: None,
                    algorithm: Algorithm::HS256,
                    key: DecodingKey::from_secret(&secret),
                }]
            }
            KeySource::PublicKey(path) => {
                let pem = std::fs::read(path).with_context(|| {
                    format!("cannot read --jwt-public-key-file {}", path.display())
                })?;
                vec![
                    pem_key(&pem)
                        .with_context(|| format!("--jwt-public-key-file {}", path.display()))?,
                ]
            }
            KeySource::Jwks(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read --jwt-jwks-file {}", path.display()))?;
                let set: JwkSet = serde_json::from_str(&text).with_context(|| {
                    format!("--jwt-jwks-file {} is not a JWKS document", path.display())
                })?;
                let mut keys = Vec::new();
                for jwk in &set.keys {
                    let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
                        (AlgorithmParameters::RSA(_), _) => Algorithm::RS256,
                        (AlgorithmParameters::EllipticCurve(ec), _)
                            if ec.curve == EllipticCurve::P256 =>
                        {
                            Algorithm::ES256
                        }
                        (AlgorithmParameters::OctetKeyPair(okp), _)
                            if okp.curve == EllipticCurve::Ed25519 =>
                        {
                            Algorithm::EdDSA
                        }
                        _ => bail!("--jwt-jwks-file holds a key that is not RSA, P-256 or Ed25519"),
                    };
                    let key = DecodingKey::from_jwk(jwk)
                        .context("--jwt-jwks-file holds an unusable key")?;
                    keys.push(Key { kid: jwk.common.key_id.clone(), algorithm, key });
                }
                if keys.is_empty() {
                    bail!("--jwt-jwks-file holds no keys");
                }
                keys
            }
        };
        Ok(Self { keys, issuer, audience, leeway_secs })
    }

    /// Verifies a token and returns its claims, or what failed, without echoing the token.
    pub fn verify(&self, token: &str) -> Result<Claims, String> {
        let header = decode_header(token)
            .map_err(|_| "the bearer token is not a well-formed JWT".to_owned())?;
        let key = match (&header.kid, self.keys.len()) {
            (Some(kid), _) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid.as_str())),
            (None, 1) => self.keys.first(),
            (None, _) => None,
        }
        .ok_or_else(|| "the token's key id (kid) names no key this server trusts".to_owned())?;
        if header.alg != key.algorithm {
            return Err(format!(
                "the token is signed with {:?}; this server accepts {:?}",
                header.alg, key.algorithm
            ));
        }
        let mut validation = Validation::new(key.algorithm);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway_secs;
        let payload = decode::<serde_json::Map<String, Value>>(token, &key.key, &validation)
            .map(|data| data.claims)
            .map_err(|err| match err.kind() {
                ErrorKind::InvalidSignature => "the token's signature does not verify".to_owned(),
                ErrorKind::ExpiredSignature => "the token has expired (exp)".to_owned(),
                ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_owned(),
                ErrorKind::InvalidIssuer => "the token's issuer (iss) is not accepted".to_owned(),
                ErrorKind::InvalidAudience => {
                    "the token's audience (aud) does not name this service".to_owned()
                }
                ErrorKind::MissingRequiredClaim(claim) => format!("the token has no {claim} claim"),
                ErrorKind::InvalidAlgorithm => "the token's algorithm is not accepted".to_owned(),
                ErrorKind::Json(_) | ErrorKind::Utf8(_) | ErrorKind::Base64(_) => {
                    "the token's claims cannot be read".to_owned()
                }
                _ => "the token cannot be verified".to_owned(),
            })?;
        Claims::from_payload(&payload)
    }
}

fn pem_key(pem: &[u8]) -> anyhow::Result<Key> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok(Key { kid: None, algorithm: Algorithm::RS256, key });
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Ok(Key { kid: None, algorithm: Algorithm::ES256, key });
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Ok(Key { kid: None, algorithm: Algorithm::EdDSA, key });
    }
    bail!("is not a PEM public key of type RSA, P-256 EC or Ed25519")
}
