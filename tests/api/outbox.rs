//! The outbox holds no token, and an invitation that can no longer be accepted is never mailed.

use std::time::Duration;

use roster::pb::{self, DeliveryState, OrganizationRole as R};
use tokio::net::TcpListener;

use crate::common::process::free_port;
use crate::common::{
    Backend, SmtpSink, TestApp, User, assert_code, fresh_database, spawn_app_on, spawn_app_with,
};
use crate::db_tests;

db_tests!(
    no_token_is_stored_while_an_email_is_retried_or_after_it_failed,
    revoked_and_expired_invitations_are_never_mailed,
    an_accepted_invitation_is_not_mailed_again,
    an_upgraded_database_keeps_no_email_body_and_mails_a_fresh_token,
);

/// Waits (up to 20 s) until the invitation of `email` shows `state`.
async fn wait_for_delivery_state(
    app: &TestApp,
    owner: &User,
    org: &str,
    email: &str,
    state: DeliveryState,
) -> pb::Invitation {
    for _ in 0..400 {
        let listed = app.invitations(owner, org, pb::InvitationState::Unspecified).await;
        if let Some(found) =
            listed.into_iter().find(|i| i.email == email && i.delivery_state == state as i32)
        {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the invitation of {email} never showed {state:?}");
}

/// Waits (up to 20 s) until no email of the invitation to `email` waits for an attempt, and
/// returns the state its latest outbox row ended in.
async fn settled_outbox_state(app: &TestApp, email: &str) -> String {
    let sql = format!(
        "SELECT o.state AS v FROM outbox o JOIN invitations i ON i.id = o.invitation_id \
         WHERE i.email = '{email}' ORDER BY o.send_number DESC"
    );
    let backend = sea_orm::ConnectionTrait::get_database_backend(&app.db);
    for _ in 0..400 {
        let rows = sea_orm::ConnectionTrait::query_all_raw(
            &app.db,
            sea_orm::Statement::from_string(backend, sql.clone()),
        )
        .await
        .unwrap();
        let states: Vec<String> = rows.iter().map(|r| r.try_get("", "v").unwrap()).collect();
        if let Some(latest) = states.first()
            && states.iter().all(|s| s != "queued" && s != "retrying")
        {
            return latest.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the email to {email} never settled");
}

/// The stored texts that contain `needle`.
async fn holding(app: &TestApp, needle: &str) -> Vec<(String, String)> {
    app.stored_texts()
        .await
        .into_iter()
        .filter(|(_, _, value)| value.contains(needle))
        .map(|(table, column, _)| (table, column))
        .collect()
}

async fn no_token_is_stored_while_an_email_is_retried_or_after_it_failed(backend: Backend) {
    let app = spawn_app_with(backend, |config| {
        // Long enough between attempts for the test to see the retrying state on a busy
        // machine.
        config.mail_retry_base_ms = 4000;
        config.mail_retry_max_ms = 4000;
        config.mail_max_attempts = 2;
    })
    .await;
    // The mail server takes every message and then reports a failure: the invitee holds a
    // token while Roster retries, and again after it gives up.
    app.smtp.fail_replies(true);
    let owner = User::new("owner");
    let judy = User::new("judy");
    let org = app.create_org(&owner, "Acme").await;
    app.invite(&owner, &org, &judy.email, R::Member, &[]).await.unwrap();
    let first = app.smtp.wait_for(&judy.email, 1).await.token().unwrap();
    wait_for_delivery_state(&app, &owner, &org, &judy.email, DeliveryState::Retrying).await;
    // The scan reads what is there: the invitee's address is found, the token is not.
    assert!(!holding(&app, &judy.email).await.is_empty(), "the scan reads the stored texts");
    assert_eq!(holding(&app, &first).await, vec![], "while retrying, the token is stored");

    let second = app.smtp.wait_for(&judy.email, 2).await.token().unwrap();
    let failed =
        wait_for_delivery_state(&app, &owner, &org, &judy.email, DeliveryState::Failed).await;
    assert!(!failed.last_delivery_error.is_empty());
    for token in [&first, &second] {
        assert_eq!(holding(&app, token).await, vec![], "after the failure, a token is stored");
    }
    app.stop().await;
}

async fn revoked_and_expired_invitations_are_never_mailed(backend: Backend) {
    let port = free_port();
    let app = spawn_app_with(backend, |config| {
        config.smtp_url = Some(format!("smtp://127.0.0.1:{port}"));
    })
    .await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let kept = "kept@example.com";
    let revoked = "revoked@example.com";
    let expired = "expired@example.com";
    let mut ids = Vec::new();
    for email in [kept, revoked, expired] {
        ids.push(app.invite(&owner, &org, email, R::Member, &[]).await.unwrap().id);
    }
    for email in [kept, revoked, expired] {
        wait_for_delivery_state(&app, &owner, &org, email, DeliveryState::Retrying).await;
    }
    app.team
        .clone()
        .revoke_invitation(owner.req(pb::RevokeInvitationRequest {
            organization_id: org.clone(),
            invitation_id: ids[1].clone(),
            ..Default::default()
        }))
        .await
        .unwrap();
    app.execute(&format!("UPDATE invitations SET expire_time = 0 WHERE email = '{expired}'")).await;
    // A retry that claimed the expired invitation's email just before the update decided, as
    // of its claim, to send it; the next retry's claim sees the expiry and cancels the email.
    // Waiting for that keeps such an attempt from meeting the server back.
    for email in [revoked, expired] {
        assert_eq!(settled_outbox_state(&app, email).await, "canceled", "{email}");
    }

    // The mail server comes back: the live invitation is mailed, the other two never are.
    let sink = SmtpSink::serve(TcpListener::bind(("127.0.0.1", port)).await.unwrap());
    assert!(sink.wait_for(kept, 1).await.token().is_some());
    assert_eq!(settled_outbox_state(&app, kept).await, "sent");
    for email in [revoked, expired] {
        let state = settled_outbox_state(&app, email).await;
        let received = sink.all().await;
        assert!(
            !received.iter().any(|m| m.recipients.iter().any(|r| r == email)),
            "{email} was mailed"
        );
        assert_eq!(state, "canceled", "{email}");
    }
    let listed = app.invitations(&owner, &org, pb::InvitationState::Unspecified).await;
    for (email, why) in [(revoked, "revoked"), (expired, "expired")] {
        let invitation = listed.iter().find(|i| i.email == email).unwrap();
        assert_eq!(invitation.delivery_state, DeliveryState::Canceled as i32, "{email}");
        assert!(
            invitation.last_delivery_error.contains(why),
            "{email}: {:?}",
            invitation.last_delivery_error
        );
    }
    app.stop().await;
}

async fn an_accepted_invitation_is_not_mailed_again(backend: Backend) {
    let app = spawn_app_with(backend, |config| {
        // Long enough for the acceptance to come before the retry on a busy machine.
        config.mail_retry_base_ms = 5000;
        config.mail_retry_max_ms = 5000;
    })
    .await;
    // The first email reaches the invitee, but the server reports a failure, so a retry is
    // pending when the invitee accepts.
    app.smtp.fail_replies(true);
    let owner = User::new("owner");
    let kim = User::new("kim");
    let org = app.create_org(&owner, "Acme").await;
    app.invite(&owner, &org, &kim.email, R::Member, &[]).await.unwrap();
    let token = app.smtp.wait_for(&kim.email, 1).await.token().unwrap();
    wait_for_delivery_state(&app, &owner, &org, &kim.email, DeliveryState::Retrying).await;
    app.accept(&kim, &token).await.unwrap();
    app.smtp.fail_replies(false);

    let state = settled_outbox_state(&app, &kim.email).await;
    assert_eq!(app.emails_to(&kim.email).await, 1, "the member was mailed again");
    assert_eq!(state, "canceled");
    let listed = app.invitations(&owner, &org, pb::InvitationState::Unspecified).await;
    assert_eq!(listed[0].delivery_state, DeliveryState::Canceled as i32);
    app.stop().await;
}

/// Runs `sql`, written with `?` placeholders, with `values` on either backend.
async fn run(db: &sea_orm::DatabaseConnection, sql: &str, values: Vec<sea_orm::Value>) {
    use sea_orm::ConnectionTrait;
    let backend = db.get_database_backend();
    let sql = match backend {
        sea_orm::DbBackend::Postgres => {
            let mut n = 0;
            sql.chars()
                .map(|c| {
                    if c == '?' {
                        n += 1;
                        format!("${n}")
                    } else {
                        c.to_string()
                    }
                })
                .collect()
        }
        _ => sql.to_owned(),
    };
    db.execute_raw(sea_orm::Statement::from_sql_and_values(backend, sql, values)).await.unwrap();
}

/// Stores what an earlier release left behind: a pending invitation of `email` in `org` whose
/// email is in the outbox in `state` (retrying or failed), with `token` in its body.
async fn leave_an_old_outbox_row(
    db: &sea_orm::DatabaseConnection,
    org: uuid::Uuid,
    email: &str,
    token: &str,
    state: &str,
) {
    let invitation = uuid::Uuid::now_v7();
    let now = chrono::Utc::now().timestamp_micros();
    let week = 7 * 24 * 3600 * 1_000_000i64;
    run(
        db,
        "INSERT INTO invitations VALUES (?, ?, ?, 'member', 'pending', ?, 'owner', ?, ?, 1, ?, \
         'connection refused', ?)",
        vec![
            invitation.into(),
            org.into(),
            email.into(),
            roster::service::token::hash(token).into(),
            now.into(),
            (now + week).into(),
            state.into(),
            now.into(),
        ],
    )
    .await;
    // About the size of a real email, so that the row spills onto overflow pages.
    let body =
        format!("{}Or paste this invitation code where asked:\n{token}\n", "Hello. ".repeat(300));
    run(
        db,
        "INSERT INTO outbox VALUES (?, ?, 1, ?, 'owner invited you', ?, ?, ?, 1, ?, \
         'connection refused', ?)",
        vec![
            uuid::Uuid::now_v7().into(),
            invitation.into(),
            email.into(),
            body.clone().into(),
            body.into(),
            state.into(),
            now.into(),
            now.into(),
        ],
    )
    .await;
}

async fn an_upgraded_database_keeps_no_email_body_and_mails_a_fresh_token(backend: Backend) {
    use sea_orm_migration::MigratorTrait as _;
    let dir = tempfile::tempdir().unwrap();
    let (url, pg_database) = fresh_database(backend, dir.path()).await;
    let before_upgrade = format!("old{}", "x".repeat(40));
    let failed_before = format!("old{}", "z".repeat(40));
    let org = uuid::Uuid::now_v7();
    {
        let db = sea_orm::Database::connect(&url).await.unwrap();
        roster::storage::migration::Migrator::up(&db, Some(1)).await.unwrap();
        let now = chrono::Utc::now().timestamp_micros();
        run(
            &db,
            "INSERT INTO organizations VALUES (?, 'Acme', 604800, ?, ?)",
            vec![org.into(), now.into(), now.into()],
        )
        .await;
        run(
            &db,
            "INSERT INTO members VALUES (?, 'owner', 'owner@example.com', 'owner', ?)",
            vec![org.into(), now.into()],
        )
        .await;
        leave_an_old_outbox_row(&db, org, "nina@example.com", &before_upgrade, "retrying").await;
        leave_an_old_outbox_row(&db, org, "fay@example.com", &failed_before, "failed").await;
        db.close().await.unwrap();
    }
    if backend == Backend::Sqlite {
        assert!(!files_holding(dir.path(), &before_upgrade).is_empty(), "the file holds the body");
        // The upgrade alone: the erased bodies leave no trace in the file's free space either,
        // since the migration erases with secure delete.
        let db = sea_orm::Database::connect(&url).await.unwrap();
        roster::storage::migration::Migrator::up(&db, None).await.unwrap();
        db.close().await.unwrap();
        assert_eq!(files_holding(dir.path(), &before_upgrade), Vec::<String>::new());
    }

    let app = spawn_app_on(tempfile::tempdir().unwrap(), url, pg_database, |_| {}).await;
    // A process of the previous release, still running beside this one, queues another.
    let during_rollout = format!("old{}", "y".repeat(40));
    leave_an_old_outbox_row(&app.db, org, "omar@example.com", &during_rollout, "retrying").await;
    for (name, old_token) in [("nina", &before_upgrade), ("omar", &during_rollout)] {
        let invitee = User::new(name);
        let fresh = app.smtp.wait_for(&invitee.email, 1).await.token().unwrap();
        assert_ne!(&fresh, old_token, "the waiting email went out with a new token");
        let holding: Vec<_> = app
            .stored_texts()
            .await
            .into_iter()
            .filter(|(_, _, value)| value.contains(old_token.as_str()))
            .map(|(table, column, _)| (table, column))
            .collect();
        assert_eq!(holding, vec![], "{name}'s old token is still stored");
        assert_code(app.accept(&invitee, old_token).await, tonic::Code::NotFound, None);
        app.accept(&invitee, &fresh).await.unwrap();
    }
    // An email that had failed for good is not sent again, and the token its erased body held
    // no longer works: the invitation needs a resend, as before.
    let fay = User::new("fay");
    assert_code(app.accept(&fay, &failed_before).await, tonic::Code::NotFound, None);
    assert_eq!(app.emails_to(&fay.email).await, 0);
    app.stop().await;
}

/// The files in `dir` whose bytes contain `needle`.
fn files_holding(dir: &std::path::Path, needle: &str) -> Vec<String> {
    let mut holding = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            holding.push(path.display().to_string());
        }
    }
    holding
}
