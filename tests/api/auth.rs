//! `--auth jwt`: end users with JWTs, services with service tokens.

use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use roster::config::AuthMode;
use roster::pb::{self, OrganizationRole as R};
use serde_json::json;
use tonic::{Code, Request};

use crate::common::{Backend, TestApp, assert_code, spawn_app_with};
use crate::db_tests;

db_tests!(
    valid_user_tokens_are_accepted_and_each_failed_check_is_named,
    public_keys_of_each_kind_verify_and_algorithms_cannot_be_swapped,
    jwks_keys_are_chosen_by_kid,
    access_service_needs_a_service_token,
    accepting_needs_a_verified_email_when_the_token_says,
    a_mistyped_claim_is_named_and_a_string_email_verified_is_read,
    the_secret_file_is_its_bytes_but_for_a_final_line_ending,
    dev_token_prints_a_token_the_server_accepts,
);

pub(crate) const ISSUER: &str = "https://login.example.com/";
pub(crate) const AUDIENCE: &str = "roster";
pub(crate) const SECRET: &str = "a-test-secret-of-at-least-thirty-two-bytes";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt").join(name)
}

pub(crate) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims of a user whose identity provider verified their email.
pub(crate) fn claims(sub: &str, email: &str) -> serde_json::Value {
    json!({ "sub": sub, "email": email, "email_verified": true, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600, "nbf": now() - 10 })
}

pub(crate) fn sign_hs(claims: &serde_json::Value, secret: &str) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes()))
        .unwrap()
}

fn sign_pem(
    algorithm: Algorithm,
    private_pem: &str,
    kid: Option<&str>,
    claims: &serde_json::Value,
) -> String {
    let pem = std::fs::read(fixture(private_pem)).unwrap();
    let key = match algorithm {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        other => panic!("{other:?}"),
    }
    .unwrap();
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &key).unwrap()
}

pub(crate) fn bearer<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

pub(crate) struct JwtSetup {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) service_token: String,
}

impl JwtSetup {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), SECRET).unwrap();
        let (service_token, line) = roster::grpc::auth::new_service_token("billing-api").unwrap();
        std::fs::write(dir.path().join("service-tokens"), format!("# allowed services\n{line}\n"))
            .unwrap();
        JwtSetup { dir, service_token }
    }

    pub(crate) async fn spawn(
        &self,
        backend: Backend,
        keys: impl FnOnce(&mut roster::config::Config),
    ) -> TestApp {
        let dir = self.dir.path().to_owned();
        spawn_app_with(backend, |config| {
            config.auth = AuthMode::Jwt;
            config.jwt_issuer = Some(ISSUER.to_owned());
            config.jwt_audience = Some(AUDIENCE.to_owned());
            config.service_tokens_file = Some(dir.join("service-tokens"));
            keys(config);
        })
        .await
    }

    pub(crate) async fn spawn_hs(&self, backend: Backend) -> TestApp {
        let secret = self.dir.path().join("secret");
        self.spawn(backend, |config| config.jwt_secret_file = Some(secret)).await
    }
}

pub(crate) async fn create_org(app: &TestApp, token: &str) -> Result<String, tonic::Status> {
    app.team
        .clone()
        .create_organization(bearer(
            token,
            pb::CreateOrganizationRequest { display_name: "Acme".into(), ..Default::default() },
        ))
        .await
        .map(|r| r.into_inner().organization.unwrap().id)
}

/// A member, as the holder of `token` reads it.
async fn member(app: &TestApp, token: &str, org: String, user_id: &str) -> pb::Member {
    let request = pb::GetMemberRequest { organization_id: org, user_id: user_id.to_owned() };
    let reply = app.team.clone().get_member(bearer(token, request)).await.expect("get member");
    reply.into_inner().member.expect("a member")
}

fn unauthenticated_saying(result: Result<String, tonic::Status>, words: &str, token: &str) {
    let status = result.expect_err("the call is refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains(words), "{:?} should say {words:?}", status.message());
    assert!(token.is_empty() || !status.message().contains(token), "the message echoes the token");
}

async fn valid_user_tokens_are_accepted_and_each_failed_check_is_named(backend: Backend) {
    let setup = JwtSetup::new();
    let app = setup.spawn_hs(backend).await;
    let good = sign_hs(&claims("auth0|alice", "alice@example.com"), SECRET);
    let org = create_org(&app, &good).await.unwrap();
    assert_eq!(member(&app, &good, org, "auth0|alice").await.email, "alice@example.com");

    let none = app
        .team
        .clone()
        .create_organization(Request::new(pb::CreateOrganizationRequest {
            display_name: "Acme".into(),
            ..Default::default()
        }))
        .await
        .map(|_| String::new());
    unauthenticated_saying(none, "no credentials", "");
    // Dev headers mean nothing in jwt mode.
    let mut dev = Request::new(pb::CreateOrganizationRequest {
        display_name: "Acme".into(),
        ..Default::default()
    });
    dev.metadata_mut().insert("x-user-id", "alice".parse().unwrap());
    let dev = app.team.clone().create_organization(dev).await.map(|_| String::new());
    unauthenticated_saying(dev, "no credentials", "");

    unauthenticated_saying(create_org(&app, "not.a.jwt").await, "well-formed", "not.a.jwt");
    let wrong_secret =
        sign_hs(&claims("alice", "alice@example.com"), "another-secret-of-thirty-two-bytes!!");
    unauthenticated_saying(create_org(&app, &wrong_secret).await, "signature", &wrong_secret);
    let mut expired = claims("alice", "alice@example.com");
    expired["exp"] = json!(now() - 3600);
    let expired = sign_hs(&expired, SECRET);
    unauthenticated_saying(create_org(&app, &expired).await, "expired", &expired);
    let mut early = claims("alice", "alice@example.com");
    early["nbf"] = json!(now() + 3600);
    let early = sign_hs(&early, SECRET);
    unauthenticated_saying(create_org(&app, &early).await, "nbf", &early);
    let mut issuer = claims("alice", "alice@example.com");
    issuer["iss"] = json!("https://evil.example.com/");
    let issuer = sign_hs(&issuer, SECRET);
    unauthenticated_saying(create_org(&app, &issuer).await, "iss", &issuer);
    let mut audience = claims("alice", "alice@example.com");
    audience["aud"] = json!("another-service");
    let audience = sign_hs(&audience, SECRET);
    unauthenticated_saying(create_org(&app, &audience).await, "aud", &audience);
    let mut no_exp = claims("alice", "alice@example.com");
    no_exp.as_object_mut().unwrap().remove("exp");
    let no_exp = sign_hs(&no_exp, SECRET);
    unauthenticated_saying(create_org(&app, &no_exp).await, "exp", &no_exp);
    // A small clock skew is tolerated.
    let mut skewed = claims("auth0|alice", "alice@example.com");
    skewed["exp"] = json!(now() - 5);
    assert!(create_org(&app, &sign_hs(&skewed, SECRET)).await.is_ok());
    assert_eq!(app.count("organizations").await, 2);
    app.stop().await;
}

async fn public_keys_of_each_kind_verify_and_algorithms_cannot_be_swapped(backend: Backend) {
    let setup = JwtSetup::new();
    for (algorithm, private, public, other_private) in [
        (Algorithm::RS256, "rsa-private.pem", "rsa-public.pem", "ec-private.pem"),
        (Algorithm::ES256, "ec-private.pem", "ec-public.pem", "ed25519-private.pem"),
        (Algorithm::EdDSA, "ed25519-private.pem", "ed25519-public.pem", "ed25519-b-private.pem"),
    ] {
        let app = setup.spawn(backend, |c| c.jwt_public_key_file = Some(fixture(public))).await;
        let good = sign_pem(algorithm, private, None, &claims("bob", "bob@example.com"));
        create_org(&app, &good).await.unwrap_or_else(|s| panic!("{algorithm:?}: {s:?}"));
        let other_algorithm = match other_private {
            "ec-private.pem" => Algorithm::ES256,
            _ => Algorithm::EdDSA,
        };
        let foreign =
            sign_pem(other_algorithm, other_private, None, &claims("bob", "bob@example.com"));
        let refused = create_org(&app, &foreign).await;
        assert_eq!(refused.unwrap_err().code(), Code::Unauthenticated, "{algorithm:?}");
        // The classic confusion: an HS256 token keyed with the public key's bytes.
        let public_pem = std::fs::read_to_string(fixture(public)).unwrap();
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &claims("bob", "bob@example.com"),
            &EncodingKey::from_secret(public_pem.as_bytes()),
        )
        .unwrap();
        let refused = create_org(&app, &confused).await;
        assert_eq!(refused.unwrap_err().code(), Code::Unauthenticated, "{algorithm:?}");
        app.stop().await;
    }
}

async fn jwks_keys_are_chosen_by_kid(backend: Backend) {
    let setup = JwtSetup::new();
    let app = setup.spawn(backend, |c| c.jwt_jwks_file = Some(fixture("jwks.json"))).await;
    let claims = claims("carol", "carol@example.com");
    let by_a = sign_pem(Algorithm::EdDSA, "ed25519-private.pem", Some("key-a"), &claims);
    let by_b = sign_pem(Algorithm::EdDSA, "ed25519-b-private.pem", Some("key-b"), &claims);
    create_org(&app, &by_a).await.unwrap();
    create_org(&app, &by_b).await.unwrap();
    let wrong_kid = sign_pem(Algorithm::EdDSA, "ed25519-private.pem", Some("key-b"), &claims);
    unauthenticated_saying(create_org(&app, &wrong_kid).await, "signature", &wrong_kid);
    let unknown_kid = sign_pem(Algorithm::EdDSA, "ed25519-private.pem", Some("key-z"), &claims);
    unauthenticated_saying(create_org(&app, &unknown_kid).await, "kid", &unknown_kid);
    let no_kid = sign_pem(Algorithm::EdDSA, "ed25519-private.pem", None, &claims);
    unauthenticated_saying(create_org(&app, &no_kid).await, "kid", &no_kid);
    app.stop().await;
}

async fn access_service_needs_a_service_token(backend: Backend) {
    let setup = JwtSetup::new();
    let app = setup.spawn_hs(backend).await;
    let user = sign_hs(&claims("dave", "dave@example.com"), SECRET);
    let org = create_org(&app, &user).await.unwrap();
    let check = || pb::AuthorizeRequest {
        consistency: None,
        user_id: "dave".into(),
        organization_id: org.clone(),
        workspace_id: String::new(),
        permission: "organization.delete".into(),
    };
    let mut access = app.access.clone();
    assert_code(access.authorize(Request::new(check())).await, Code::Unauthenticated, None);
    assert_code(
        access.authorize(bearer("rst_not-a-known-token", check())).await,
        Code::Unauthenticated,
        None,
    );
    assert_code(access.authorize(bearer(&user, check())).await, Code::PermissionDenied, None);
    assert_code(
        access.list_permissions(Request::new(pb::ListPermissionsRequest {})).await,
        Code::Unauthenticated,
        None,
    );
    let decision =
        access.authorize(bearer(&setup.service_token, check())).await.unwrap().into_inner();
    assert!(decision.allowed);
    // A service token does not make its holder an end user.
    let as_user = create_org(&app, &setup.service_token).await;
    assert_eq!(as_user.unwrap_err().code(), Code::PermissionDenied);
    app.stop().await;
}

async fn accepting_needs_a_verified_email_when_the_token_says(backend: Backend) {
    let setup = JwtSetup::new();
    let app = setup.spawn_hs(backend).await;
    let owner = sign_hs(&claims("erin", "erin@example.com"), SECRET);
    let org = create_org(&app, &owner).await.unwrap();
    app.team
        .clone()
        .create_invitation(bearer(
            &owner,
            pb::CreateInvitationRequest {
                organization_id: org,
                email: "frank@example.com".into(),
                role: R::Member as i32,
                workspace_grants: vec![],
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let token = app.smtp.wait_for("frank@example.com", 1).await.token().unwrap();
    let accept = |jwt: &str| {
        let mut team = app.team.clone();
        let request =
            bearer(jwt, pb::AcceptInvitationRequest { token: token.clone(), ..Default::default() });
        async move { team.accept_invitation(request).await }
    };
    let mut unverified = claims("frank", "frank@example.com");
    unverified["email_verified"] = json!(false);
    assert_code(accept(&sign_hs(&unverified, SECRET)).await, Code::PermissionDenied, None);
    let mut verified = claims("frank", "frank@example.com");
    verified["email_verified"] = json!(true);
    let member = accept(&sign_hs(&verified, SECRET)).await.unwrap().into_inner().member.unwrap();
    assert_eq!(member.user_id, "frank");
    app.stop().await;
}

async fn a_mistyped_claim_is_named_and_a_string_email_verified_is_read(backend: Backend) {
    let setup = JwtSetup::new();
    let app = setup.spawn_hs(backend).await;
    for (claim, value) in [
        ("sub", json!(42)),
        ("email", json!(["alice@example.com"])),
        ("email_verified", json!("yes")),
        ("email_verified", json!(1)),
    ] {
        let mut mistyped = claims("alice", "alice@example.com");
        mistyped[claim] = value;
        let token = sign_hs(&mistyped, SECRET);
        unauthenticated_saying(create_org(&app, &token).await, &format!("{claim} claim"), &token);
    }
    let mut no_sub = claims("alice", "alice@example.com");
    no_sub.as_object_mut().unwrap().remove("sub");
    let no_sub = sign_hs(&no_sub, SECRET);
    unauthenticated_saying(create_org(&app, &no_sub).await, "no sub claim", &no_sub);
    assert_eq!(app.count("organizations").await, 0);
    // Some identity providers send the flag as a string.
    let mut text = claims("alice", "alice@example.com");
    text["email_verified"] = json!("true");
    create_org(&app, &sign_hs(&text, SECRET)).await.unwrap();
    text["email_verified"] = json!("false");
    let refused = create_org(&app, &sign_hs(&text, SECRET)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    app.stop().await;
}

async fn the_secret_file_is_its_bytes_but_for_a_final_line_ending(backend: Backend) {
    let setup = JwtSetup::new();
    let secret = setup.dir.path().join("secret-with-newline");
    let spaced = format!(" {SECRET} ");
    for (contents, signed_with, accepted) in [
        // Written by `echo`: the line ending is not part of the secret.
        (format!("{SECRET}\n"), SECRET.to_owned(), true),
        (format!("{SECRET}\r\n"), SECRET.to_owned(), true),
        // Spaces are: an identity provider given the same text signs with them.
        (spaced.clone(), spaced.clone(), true),
        (spaced.clone(), SECRET.to_owned(), false),
    ] {
        std::fs::write(&secret, &contents).unwrap();
        let path = secret.clone();
        let app = setup.spawn(backend, |c| c.jwt_secret_file = Some(path)).await;
        let token = sign_hs(&claims("alice", "alice@example.com"), &signed_with);
        assert_eq!(create_org(&app, &token).await.is_ok(), accepted, "{contents:?}");
        app.stop().await;
    }
}

async fn dev_token_prints_a_token_the_server_accepts(backend: Backend) {
    let setup = JwtSetup::new();
    let app = setup.spawn_hs(backend).await;
    let mint = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_roster"))
            .arg("--jwt-secret-file")
            .arg(setup.dir.path().join("secret"))
            .args(["--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE, "dev-token"])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    let alice = mint(&["alice", "--email", "alice@example.com"]);
    let org = create_org(&app, &alice).await.unwrap();
    assert_eq!(member(&app, &alice, org, "alice").await.email, "alice@example.com");
    // Without a verified email it cannot found an organization.
    let unverified = mint(&["bob", "--email", "bob@example.com", "--unverified"]);
    let refused = create_org(&app, &unverified).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // An hour unless told otherwise.
    let lifetime = |token: &str| {
        let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
        validation.set_audience(&[AUDIENCE]);
        let key = jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes());
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation).unwrap();
        claims.claims["exp"].as_i64().unwrap() - claims.claims["iat"].as_i64().unwrap()
    };
    assert_eq!(lifetime(&alice), 3600);
    assert_eq!(lifetime(&mint(&["carol", "--valid-secs", "60"])), 60);
    app.stop().await;
}
