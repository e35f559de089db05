//! One address, one mailbox: invitation emails are refused unless the mailer delivers them to
//! exactly the address stored, and look-alike characters never make two mailboxes compare equal.

use roster::pb::OrganizationRole as R;
use tonic::Code;

use crate::common::{Backend, User, assert_code, spawn_app};
use crate::db_tests;

db_tests!(
    invitation_emails_the_mailer_would_read_differently_are_refused,
    an_address_is_stored_normalized_and_delivered_exactly_as_stored,
);

async fn invitation_emails_the_mailer_would_read_differently_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let before = app.snapshot().await;
    let long_local = format!("{}@victim.example", "k".repeat(65));
    for (bad, says) in [
        // Forms the mailer reads as another address, or cannot read at all.
        ("\"kate\"@victim.example", "quot"),
        ("\"kate smith\"@victim.example", ""),
        ("kate(work)@victim.example", "comment"),
        ("kate@[127.0.0.1]", "IP"),
        ("kate@127.0.0.1", "IP"),
        (".kate@victim.example", "dot"),
        ("ka..te@victim.example", "dot"),
        ("kate.@victim.example", "dot"),
        ("kate@-victim.example", "hyphen"),
        ("kate@victim-.example", "hyphen"),
        ("kate@victim_x.example", ""),
        ("kate@\u{301}victim.example", "delivered"),
        (long_local.as_str(), "64"),
        // Look-alikes of ASCII letters, and invisible characters.
        ("\u{212A}ate@victim.example", "U+212A"),
        ("\u{FF4B}ate@victim.example", "U+FF4B"),
        ("\u{FB01}ona@victim.example", "U+FB01"),
        ("kate@victim\u{FF0E}example", "U+FF0E"),
        ("ka\u{200B}te@victim.example", "U+200B"),
        ("kate\u{00AD}@victim.example", "U+00AD"),
        ("kate@vic\u{2060}tim.example", "U+2060"),
    ] {
        let result = app.invite(&owner, &org, bad, R::Member, &[]).await;
        let message = result.as_ref().err().map(|s| s.message().to_owned()).unwrap_or_default();
        assert_code(result, Code::InvalidArgument, Some("email"));
        assert!(message.contains(says), "{bad:?}: {message:?} should say {says:?}");
    }
    assert_eq!(app.snapshot().await, before, "a refused invitation changed something");
    app.stop().await;
}

async fn an_address_is_stored_normalized_and_delivered_exactly_as_stored(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    // ASCII letters fold to lower case; other characters are kept as written, composed (NFC).
    let invited = app.invite(&owner, &org, " J\u{F6}RG@Example.DE ", R::Member, &[]).await.unwrap();
    assert_eq!(invited.email, "j\u{F6}rg@example.de");
    let email = app.smtp.wait_for("j\u{F6}rg@example.de", 1).await;
    assert_eq!(email.recipients, vec!["j\u{F6}rg@example.de".to_owned()]);

    // The same mailbox written with a combining diaeresis is the same address.
    let decomposed = app.invite(&owner, &org, "jo\u{308}rg@example.de", R::Member, &[]).await;
    assert_code(decomposed, Code::AlreadyExists, None);
    // A capital Ö is another mailbox: only ASCII letters fold.
    let capital = app.invite(&owner, &org, "j\u{D6}rg@example.de", R::Member, &[]).await.unwrap();
    assert_eq!(capital.email, "j\u{D6}rg@example.de");

    // The invitee accepts with the identity the mail was sent to, written in any ASCII case.
    let jorg = User { id: "jorg".into(), email: "J\u{F6}rg@EXAMPLE.de".into() };
    let token = email.token().unwrap();
    let mut request = tonic::Request::new(roster::pb::AcceptInvitationRequest {
        token: token.clone(),
        ..Default::default()
    });
    request.metadata_mut().insert("x-user-id", jorg.id.parse().unwrap());
    request.metadata_mut().insert(
        "x-user-email",
        tonic::metadata::MetadataValue::try_from(jorg.email.as_bytes()).unwrap(),
    );
    let member = app.team.clone().accept_invitation(request).await.unwrap().into_inner();
    assert_eq!(member.member.unwrap().email, "j\u{F6}rg@example.de");
    app.stop().await;
}
