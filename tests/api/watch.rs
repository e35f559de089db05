//! WatchService: Watch streams the change log in commit order without gaps, from a token or
//! from now, filtered by organization, user or workspace; Snapshot gives an organization as of
//! one revision, from which Watch continues. Consumers resume by token across cut-offs,
//! shutdowns, a killed server and a restarted database, with nothing lost or repeated.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::{Rng as _, SeedableRng as _};
use roster::domain::ChangeToken;
use roster::pb::watch_service_client::WatchServiceClient;
use roster::pb::{self, OrganizationRole as R, WorkspaceAccess as A, access_delta::Delta};
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};
use tonic_types::StatusExt as _;

use crate::common::process::Server;
use crate::common::{
    Backend, SmtpSink, TestApp, User, assert_code, create_org_with, drop_database, fresh_database,
    set_access, spawn_app, spawn_app_with,
};
use crate::db_tests;

db_tests!(
    a_watch_from_a_token_sends_the_later_changes_in_order_then_follows_new_ones,
    replaying_a_watch_stream_up_to_a_token_gives_what_the_lists_return_there,
    a_snapshot_and_a_watch_from_its_token_give_what_the_lists_return_later,
    a_snapshot_comes_in_pages_and_an_unknown_organization_is_not_found,
    a_stream_of_every_organization_sees_each_position_once_in_order_under_concurrent_writers,
    an_idle_stream_gets_a_checkpoint_every_second,
    filters_send_only_the_deltas_that_touch_a_user_or_a_workspace_and_the_token_still_moves,
    malformed_requests_are_invalid_arguments_naming_the_field,
    a_token_older_than_the_retention_is_out_of_range_saying_how_far_back_the_log_goes,
    a_consumer_that_falls_behind_is_cut_off_with_its_last_token_and_resumes_from_it,
    streams_hold_no_in_flight_slot_outlive_the_call_deadline_and_have_their_own_limit,
    stopping_the_server_ends_its_streams_with_a_token_to_resume_from,
    watch_and_snapshot_need_a_service_credential,
    a_consumer_resumes_across_a_killed_server_with_nothing_lost_or_repeated,
);

/// Longest wait for anything a stream should send.
const PATIENCE: Duration = Duration::from_secs(15);

fn watcher(app: &TestApp) -> WatchServiceClient<Channel> {
    WatchServiceClient::new(app.channel())
}

/// The position a stream's token holds.
fn position(token: &str) -> u64 {
    ChangeToken::parse(token).expect("a change token").position.expect("a position").0
}

/// The position of the change a reply's token names. On PostgreSQL a reply's token names its
/// change by organization and revision, and the change gets its position after its commit:
/// this places it.
async fn placed(db: &sea_orm::DatabaseConnection, token: &str) -> u64 {
    let token = ChangeToken::parse(token).expect("a change token");
    if let Some(position) = token.position {
        return position.0;
    }
    let (org, revision) = token.organization.expect("a reply's token names its organization");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        // Positions are given at once only while a stream is open; any process may place.
        roster::storage::changelog::place(db).await.unwrap();
        let found = roster::storage::changelog::position_of_revision(db, org, revision).await;
        if let Some(Some(position)) = found.unwrap() {
            return position.0;
        }
        assert!(tokio::time::Instant::now() < deadline, "the change got no position");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Creates an organization: its id and the reply's consistency token.
async fn found(app: &TestApp, owner: &User, name: &str) -> (String, String) {
    let created = app
        .team
        .clone()
        .create_organization(owner.req(pb::CreateOrganizationRequest {
            display_name: name.to_owned(),
            ..Default::default()
        }))
        .await
        .expect("create organization")
        .into_inner();
    (created.organization.expect("an organization").id, created.consistency_token)
}

/// The change a token names: its organization and revision.
fn change_of(token: &str) -> (String, u64) {
    let token = ChangeToken::parse(token).expect("a change token");
    let (org, revision) = token.organization.expect("a change's token names its organization");
    (org.to_string(), revision.0)
}

fn request(start: &str, org: &str) -> pb::WatchRequest {
    pb::WatchRequest {
        start_token: start.to_owned(),
        organization_id: org.to_owned(),
        ..Default::default()
    }
}

async fn open(
    client: &mut WatchServiceClient<Channel>,
    req: pb::WatchRequest,
) -> Streaming<pb::WatchResponse> {
    client.watch(req).await.expect("the stream opens").into_inner()
}

/// The next response, or the status that ended the stream.
async fn next(stream: &mut Streaming<pb::WatchResponse>) -> Result<pb::WatchResponse, Status> {
    match tokio::time::timeout(PATIENCE, stream.message()).await {
        Ok(Ok(Some(response))) => Ok(response),
        Ok(Ok(None)) => panic!("the stream ended without a status"),
        Ok(Err(status)) => Err(status),
        Err(_) => panic!("nothing arrived within {PATIENCE:?}"),
    }
}

/// Every change the stream sends until a response's token reaches `through`.
async fn changes_through(
    stream: &mut Streaming<pb::WatchResponse>,
    through: u64,
) -> Vec<pb::Change> {
    let mut changes = Vec::new();
    loop {
        let response = next(stream).await.expect("the stream goes on");
        changes.extend(response.changes);
        if position(&response.token) >= through {
            return changes;
        }
    }
}

/// The position of the change log's last change, read from the database once every committed
/// change has its position (on PostgreSQL the test places them, as any process may).
async fn head(app: &TestApp) -> u64 {
    roster::storage::changelog::place(&app.db).await.unwrap();
    roster::storage::changelog::head(&app.db).await.unwrap().0.0
}

fn positions(changes: &[pb::Change]) -> Vec<u64> {
    changes.iter().map(|c| position(&c.consistency_token)).collect()
}

/// Members and grants, as the lists show them or as deltas build them.
#[derive(Debug, Default, PartialEq, Eq, Clone)]
struct State {
    /// User id → (email, role).
    members: BTreeMap<String, (String, i32)>,
    /// (workspace, user) → access.
    grants: BTreeMap<(String, String), i32>,
}

impl State {
    fn apply(&mut self, change: &pb::Change) {
        for delta in &change.deltas {
            match delta.delta.as_ref().expect("a delta") {
                Delta::OrganizationCreated(_) => {}
                Delta::OrganizationDeleted(_) => *self = State::default(),
                Delta::MemberAdded(m) => {
                    self.members.insert(m.user_id.clone(), (m.email.clone(), m.role));
                }
                Delta::MemberRemoved(m) => {
                    self.members.remove(&m.user_id).expect("a removed member was a member");
                }
                Delta::MemberRoleChanged(m) => {
                    let member = self.members.get_mut(&m.user_id).expect("a member");
                    assert_eq!(member.1, m.old_role, "the old role is the role held");
                    member.1 = m.new_role;
                }
                Delta::GrantChanged(g) => {
                    let key = (g.workspace_id.clone(), g.user_id.clone());
                    let old = self.grants.get(&key).copied().unwrap_or(A::None as i32);
                    assert_eq!(old, g.old_access, "the old access is the access held: {g:?}");
                    if g.new_access == A::None as i32 {
                        self.grants.remove(&key);
                    } else {
                        self.grants.insert(key, g.new_access);
                    }
                }
                // A deleted workspace's grants follow as deltas of their own.
                Delta::WorkspaceCreated(_) | Delta::WorkspaceDeleted(_) => {}
                Delta::OwnershipTransferred(_) => {}
                // The record of an end: the grant's row stays, so the mirror keeps it too.
                Delta::GrantExpired(_) => {}
            }
        }
    }

    fn add_snapshot(&mut self, page: &pb::SnapshotResponse) {
        for m in &page.members {
            self.members.insert(m.user_id.clone(), (m.email.clone(), m.role));
        }
        for g in &page.grants {
            self.grants.insert((g.workspace_id.clone(), g.user_id.clone()), g.access);
        }
    }

    /// What ListMembers and ListWorkspaceAccess return now.
    async fn listed(app: &TestApp, owner: &User, org: &str) -> State {
        let mut state = State::default();
        let mut team = app.team.clone();
        let members = team
            .list_members(owner.req(pb::ListMembersRequest {
                organization_id: org.to_owned(),
                page_size: 1000,
                page_token: String::new(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(members.next_page_token.is_empty());
        for m in members.members {
            state.members.insert(m.user_id, (m.email, m.role));
        }
        let grants = team
            .list_workspace_access(owner.req(pb::ListWorkspaceAccessRequest {
                organization_id: org.to_owned(),
                page_size: 1000,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(grants.next_page_token.is_empty());
        for g in grants.grants {
            state.grants.insert((g.workspace_id, g.user_id), g.access);
        }
        state
    }
}

/// An organization whose members and grants random calls change, as its Owner (who changes
/// when ownership moves) sees it.
struct Churn {
    org: String,
    owner: User,
    users: Vec<User>,
    workspaces: Vec<String>,
    /// The token of the last call that succeeded.
    last_token: String,
}

impl Churn {
    async fn start(app: &TestApp) -> Churn {
        let owner = User::new("owner");
        let (org, _) = found(app, &owner, "Churn").await;
        let ws = app.create_workspace(&owner, &org, "first").await;
        let users: Vec<User> = ["ada", "bob", "cy"].iter().map(|n| User::new(n)).collect();
        for (i, user) in users.iter().enumerate() {
            let role = [R::Admin, R::Member, R::Billing][i];
            app.join(&owner, &org, user, role, &[(&ws, A::Read)]).await;
        }
        let mut churn = Churn {
            org,
            users,
            workspaces: vec![ws],
            last_token: String::new(),
            owner: owner.clone(),
        };
        churn.users.push(owner);
        // The joins' tokens are not returned here; a no-op change names the state.
        churn.last_token = churn.rename(app, "Churn").await;
        churn
    }

    async fn rename(&self, app: &TestApp, name: &str) -> String {
        app.team
            .clone()
            .update_organization(self.owner.req(pb::UpdateOrganizationRequest {
                organization: Some(pb::Organization {
                    id: self.org.clone(),
                    display_name: name.to_owned(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths: vec!["display_name".into()] }),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .consistency_token
    }

    /// One random call; refused ones (an Owner rule, a removed member) change nothing.
    async fn step(&mut self, app: &TestApp, rng: &mut rand::rngs::StdRng) {
        let mut team = app.team.clone();
        let user = self.users[rng.random_range(0..self.users.len())].clone();
        // The acting Owner stays one, so that the calls keep coming through.
        let other = Some(user.clone()).filter(|u| u.id != self.owner.id);
        let org = self.org.clone();
        let token = match rng.random_range(0..10) {
            0 => team
                .create_workspace(self.owner.req(pb::CreateWorkspaceRequest {
                    organization_id: org,
                    display_name: format!("w{}", rng.random_range(0..1000)),
                    ..Default::default()
                }))
                .await
                .map(|r| {
                    let r = r.into_inner();
                    self.workspaces.push(r.workspace.unwrap().id);
                    r.consistency_token
                }),
            1 if self.workspaces.len() > 1 => {
                let at = rng.random_range(0..self.workspaces.len());
                let ws = self.workspaces.remove(at);
                team.delete_workspace(self.owner.req(pb::DeleteWorkspaceRequest {
                    organization_id: org,
                    workspace_id: ws,
                    ..Default::default()
                }))
                .await
                .map(|r| r.into_inner().consistency_token)
            }
            2 | 3 if other.is_some() => {
                let role = [R::Owner, R::Admin, R::Billing, R::Member][rng.random_range(0..4)];
                team.update_member_role(self.owner.req(pb::UpdateMemberRoleRequest {
                    organization_id: org,
                    user_id: user.id.clone(),
                    role: role as i32,
                    ..Default::default()
                }))
                .await
                .map(|r| r.into_inner().consistency_token)
            }
            4 if other.is_some() => team
                .remove_member(self.owner.req(pb::RemoveMemberRequest {
                    organization_id: org,
                    user_id: user.id.clone(),
                    ..Default::default()
                }))
                .await
                .map(|r| r.into_inner().consistency_token),
            5 if other.is_some() => {
                let moved = team
                    .transfer_ownership(self.owner.req(pb::TransferOwnershipRequest {
                        organization_id: org,
                        new_owner_user_id: user.id.clone(),
                        ..Default::default()
                    }))
                    .await
                    .map(|r| r.into_inner().consistency_token);
                if moved.is_ok() {
                    self.owner = user.clone();
                }
                moved
            }
            _ => {
                let ws = self.workspaces[rng.random_range(0..self.workspaces.len())].clone();
                let access = [A::Read, A::Write, A::None][rng.random_range(0..3)];
                team.set_workspace_access(self.owner.req(pb::SetWorkspaceAccessRequest {
                    organization_id: org,
                    workspace_id: ws,
                    user_id: user.id.clone(),
                    access: access as i32,
                    ..Default::default()
                }))
                .await
                .map(|r| r.into_inner().consistency_token)
            }
        };
        if let Ok(token) = token {
            self.last_token = token;
        }
    }
}

async fn a_watch_from_a_token_sends_the_later_changes_in_order_then_follows_new_ones(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let (org, created_token) = found(&app, &owner, "Acme").await;
    let ws = app.create_workspace(&owner, &org, "prod").await;
    let engineer = User::new("engineer");
    app.join(&owner, &org, &engineer, R::Member, &[(&ws, A::Read)]).await;

    // From the creation's token: what followed it, already committed.
    let mut client = watcher(&app);
    let mut stream = open(&mut client, request(&created_token, &org)).await;
    let history = changes_through(&mut stream, head(&app).await).await;
    let revisions: Vec<i64> = history.iter().map(|c| c.revision).collect();
    assert_eq!(revisions, [2, 3, 4], "workspace, invitation, acceptance: {history:#?}");
    assert!(
        matches!(&history[0].deltas[0].delta, Some(Delta::WorkspaceCreated(w)) if w.workspace_id == ws)
    );
    assert!(history[1].deltas.is_empty(), "an invitation changes no access");
    let accepted = &history[2];
    assert_eq!(accepted.actor_user_id, engineer.id);
    assert!(!accepted.audit_event_id.is_empty());
    assert!(accepted.commit_time.is_some());
    assert!(
        matches!(&accepted.deltas[0].delta, Some(Delta::MemberAdded(m)) if m.user_id == engineer.id && m.role == R::Member as i32)
    );
    assert!(
        matches!(&accepted.deltas[1].delta, Some(Delta::GrantChanged(g)) if g.new_access == A::Read as i32 && g.old_access == A::None as i32)
    );

    // A change made now arrives on the open stream, with the token its reply carried.
    let removed = app
        .team
        .clone()
        .remove_member(owner.req(pb::RemoveMemberRequest {
            organization_id: org.clone(),
            user_id: engineer.id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let live =
        changes_through(&mut stream, placed(&app.db, &removed.consistency_token).await).await;
    assert_eq!(live.len(), 1, "{live:#?}");
    assert_eq!(change_of(&live[0].consistency_token), change_of(&removed.consistency_token));
    assert_eq!(live[0].revision, 5);
    let kinds: Vec<&str> = live[0]
        .deltas
        .iter()
        .map(|d| match d.delta.as_ref().unwrap() {
            Delta::MemberRemoved(_) => "member_removed",
            Delta::GrantChanged(g) if g.new_access == A::None as i32 => "grant_removed",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        ["member_removed", "grant_removed"],
        "rule 4: the grant goes with the member"
    );

    // The stream's token resumes exactly after it: the same change is not sent again.
    let mut again = open(&mut client, request(&live[0].consistency_token, &org)).await;
    let renamed = app
        .team
        .clone()
        .update_organization(owner.req(pb::UpdateOrganizationRequest {
            organization: Some(pb::Organization {
                id: org.clone(),
                display_name: "Acme 2".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["display_name".into()] }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let resumed =
        changes_through(&mut again, placed(&app.db, &renamed.consistency_token).await).await;
    assert_eq!(resumed.iter().map(|c| c.revision).collect::<Vec<_>>(), [6]);
    app.stop().await;
}

async fn replaying_a_watch_stream_up_to_a_token_gives_what_the_lists_return_there(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    for seed in [7_u64, 1913] {
        // From now, for every organization: the one made next is seen from its creation.
        let mut client = watcher(&app);
        let mut stream = open(&mut client, request("", "")).await;
        let mut churn = Churn::start(&app).await;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut replayed = State::default();
        for round in 0..4 {
            for _ in 0..12 {
                churn.step(&app, &mut rng).await;
            }
            let token = churn.last_token.clone();
            let listed = State::listed(&app, &churn.owner, &churn.org).await;
            let at = placed(&app.db, &token).await;
            for change in changes_through(&mut stream, at).await {
                assert!(position(&change.consistency_token) <= at, "after T");
                if change.organization_id == churn.org {
                    replayed.apply(&change);
                }
            }
            assert_eq!(
                replayed, listed,
                "seed {seed}, round {round}: the replay at T is the state at T"
            );
        }
    }
    app.stop().await;
}

async fn a_snapshot_and_a_watch_from_its_token_give_what_the_lists_return_later(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut churn = Churn::start(&app).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    for _ in 0..10 {
        churn.step(&app, &mut rng).await;
    }
    let before = State::listed(&app, &churn.owner, &churn.org).await;
    let mut client = watcher(&app);
    let pages: Vec<pb::SnapshotResponse> = collect_snapshot(&mut client, &churn.org, 2).await;
    let mut state = State::default();
    for page in &pages {
        state.add_snapshot(page);
    }
    assert_eq!(state, before, "the snapshot is the state it was taken at");
    let last = pages.last().unwrap();
    let token = ChangeToken::parse(&last.token).unwrap();
    assert_eq!(token.organization.unwrap().1.0 as i64, last.revision);
    assert_eq!(
        last.revision as u64,
        ChangeToken::parse(&churn.last_token).unwrap().organization.unwrap().1.0
    );

    let mut stream = open(&mut client, request(&last.token, &churn.org)).await;
    for round in 0..3 {
        for _ in 0..10 {
            churn.step(&app, &mut rng).await;
        }
        let listed = State::listed(&app, &churn.owner, &churn.org).await;
        let at = placed(&app.db, &churn.last_token).await;
        for change in changes_through(&mut stream, at).await {
            assert!(change.revision > last.revision, "nothing the snapshot holds comes again");
            state.apply(&change);
        }
        assert_eq!(state, listed, "round {round}: snapshot + watch is the state at T");
    }
    app.stop().await;
}

async fn collect_snapshot(
    client: &mut WatchServiceClient<Channel>,
    org: &str,
    page_size: i32,
) -> Vec<pb::SnapshotResponse> {
    let mut stream = client
        .snapshot(pb::SnapshotRequest { organization_id: org.to_owned(), page_size })
        .await
        .expect("a snapshot")
        .into_inner();
    let mut pages = Vec::new();
    while let Some(page) = tokio::time::timeout(PATIENCE, stream.message()).await.unwrap().unwrap()
    {
        pages.push(page);
    }
    pages
}

async fn a_snapshot_comes_in_pages_and_an_unknown_organization_is_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let mut workspaces = Vec::new();
    for i in 0..3 {
        workspaces.push(app.create_workspace(&owner, &org, &format!("w{i}")).await);
    }
    let ann = User::new("ann");
    app.join(&owner, &org, &ann, R::Member, &[]).await;
    let mut team = app.team.clone();
    for ws in &workspaces[..2] {
        team.set_workspace_access(set_access(&owner, &org, ws, &ann, A::Read)).await.unwrap();
    }
    let mut client = watcher(&app);
    // Two members, three workspaces, two grants: seven items in pages of four.
    let pages = collect_snapshot(&mut client, &org, 4).await;
    let sizes: Vec<(usize, usize, usize)> =
        pages.iter().map(|p| (p.members.len(), p.workspaces.len(), p.grants.len())).collect();
    assert_eq!(sizes, [(2, 2, 0), (0, 1, 2)]);
    assert!(pages[0].token.is_empty(), "only the last page carries the token");
    // Created (1), three workspaces, Ann invited and accepted, two grants.
    assert_eq!(pages[1].revision, 8);
    let listed: Vec<String> =
        pages.iter().flat_map(|p| p.workspaces.iter().map(|w| w.id.clone())).collect();
    assert_eq!(listed, workspaces, "workspaces oldest first");
    let all = collect_snapshot(&mut client, &org, 0).await;
    assert_eq!(all.len(), 1, "page_size 0 means 1000");

    let unknown = roster::domain::OrganizationId::generate().to_string();
    let missing =
        client.snapshot(pb::SnapshotRequest { organization_id: unknown, page_size: 0 }).await;
    assert_code(missing.map(|_| ()), Code::NotFound, None);
    app.stop().await;
}

async fn a_stream_of_every_organization_sees_each_position_once_in_order_under_concurrent_writers(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let mut orgs = Vec::new();
    for i in 0..5 {
        orgs.push(app.create_org(&owner, &format!("Org {i}")).await);
    }
    let start = head(&app).await;
    let start_token =
        ChangeToken { organization: None, position: Some(roster::domain::LogPosition(start)) };
    let mut client = watcher(&app);
    let mut stream = open(&mut client, request(&start_token.encode(), "")).await;
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..10 {
        let (mut team, owner, org) =
            (app.team.clone(), owner.clone(), orgs[writer % orgs.len()].clone());
        writers.spawn(async move {
            let mut tokens = Vec::new();
            for i in 0..12 {
                let reply = team
                    .create_workspace(owner.req(pb::CreateWorkspaceRequest {
                        organization_id: org.clone(),
                        display_name: format!("w{writer}-{i}"),
                        ..Default::default()
                    }))
                    .await
                    .expect("create a workspace")
                    .into_inner();
                tokens.push(reply.consistency_token);
            }
            tokens
        });
    }
    // The stream is read while the writers write, not only afterwards.
    let mut seen = changes_through(&mut stream, start + 20).await;
    let mut written = BTreeSet::new();
    while let Some(done) = writers.join_next().await {
        written.extend(done.unwrap());
    }
    let end = start + 10 * 12;
    assert_eq!(head(&app).await, end);
    seen.extend(changes_through(&mut stream, end).await);
    assert_eq!(
        positions(&seen),
        (start + 1..=end).collect::<Vec<u64>>(),
        "every position once, in order"
    );
    let streamed: BTreeSet<(String, u64)> =
        seen.iter().map(|c| change_of(&c.consistency_token)).collect();
    let written: BTreeSet<(String, u64)> = written.iter().map(|t| change_of(t)).collect();
    assert_eq!(streamed, written, "each change is streamed with the token its reply carried");
    for org in &orgs {
        let revisions: Vec<i64> =
            seen.iter().filter(|c| &c.organization_id == org).map(|c| c.revision).collect();
        assert_eq!(revisions, (2..=25).collect::<Vec<i64>>(), "{org}: its revisions in order");
    }
    app.stop().await;
}

async fn an_idle_stream_gets_a_checkpoint_every_second(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let mut client = watcher(&app);
    let mut stream = open(&mut client, request("", &org)).await;
    let first = Instant::now();
    let mut last = first;
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let checkpoint = next(&mut stream).await.unwrap();
        let gap = last.elapsed();
        last = Instant::now();
        assert!(checkpoint.changes.is_empty(), "nothing changed: {checkpoint:?}");
        // Sent every 900 ms; the margin is for a busy machine's scheduling.
        assert!(gap < Duration::from_secs(3), "a checkpoint within a second: {gap:?}");
        tokens.push(checkpoint.token);
    }
    // On average one a second, or nearly.
    let three = first.elapsed();
    assert!(three < Duration::from_millis(4500), "three checkpoints took {three:?}");
    let token = ChangeToken::parse(&tokens[2]).unwrap();
    assert_eq!(position(&tokens[2]), head(&app).await, "a checkpoint names the log's end");
    assert_eq!(token.organization.map(|(o, r)| (o.to_string(), r.0)), Some((org.clone(), 1)));
    // A checkpoint's token works as a consistency token for that organization.
    let check = pb::AuthorizeRequest {
        user_id: owner.id.clone(),
        organization_id: org.clone(),
        permission: "organization.delete".into(),
        consistency: Some(pb::Consistency {
            requirement: pb::ConsistencyRequirement::AtLeastAsFresh as i32,
            at_least_as_fresh: tokens[2].clone(),
        }),
        ..Default::default()
    };
    assert!(app.access.clone().authorize(check).await.unwrap().into_inner().allowed);
    app.stop().await;
}

async fn filters_send_only_the_deltas_that_touch_a_user_or_a_workspace_and_the_token_still_moves(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let (bob, carol) = (User::new("bob"), User::new("carol"));
    let org = app.create_org(&owner, "Acme").await;
    let other_org = app.create_org(&owner, "Other").await;
    let ws1 = app.create_workspace(&owner, &org, "one").await;
    let ws2 = app.create_workspace(&owner, &org, "two").await;
    app.join(&owner, &org, &bob, R::Member, &[(&ws1, A::Read)]).await;
    app.join(&owner, &org, &carol, R::Member, &[(&ws2, A::Read)]).await;
    let start = ChangeToken {
        organization: None,
        position: Some(roster::domain::LogPosition(head(&app).await)),
    }
    .encode();
    let mut client = watcher(&app);
    let filtered = |user: &str, ws: &str| pb::WatchRequest {
        start_token: start.clone(),
        organization_id: org.clone(),
        user_id: user.to_owned(),
        workspace_id: ws.to_owned(),
    };
    let mut of_bob = open(&mut client, filtered(&bob.id, "")).await;
    let mut of_ws2 = open(&mut client, filtered("", &ws2)).await;
    let mut of_bob_on_ws2 = open(&mut client, filtered(&bob.id, &ws2)).await;

    let mut team = app.team.clone();
    let set = |user: &User, ws: &str, access: A| {
        owner.req(pb::SetWorkspaceAccessRequest {
            organization_id: org.clone(),
            workspace_id: ws.to_owned(),
            user_id: user.id.clone(),
            access: access as i32,
            ..Default::default()
        })
    };
    let bob_ws1 = team.set_workspace_access(set(&bob, &ws1, A::Write)).await.unwrap().into_inner();
    let carol_ws2 =
        team.set_workspace_access(set(&carol, &ws2, A::Write)).await.unwrap().into_inner();
    // Removing a workspace takes Carol's grant with it; Bob held none there.
    let deleted = team
        .delete_workspace(owner.req(pb::DeleteWorkspaceRequest {
            organization_id: org.clone(),
            workspace_id: ws2.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    // Touches neither Bob nor workspace two; then a change to another organization. The
    // streams reach the log's end all the same: their tokens move past what they do not send.
    team.set_workspace_access(set(&carol, &ws1, A::Read)).await.unwrap();
    app.create_workspace(&owner, &other_org, "elsewhere").await;
    let end = head(&app).await;

    let bobs = changes_through(&mut of_bob, end).await;
    assert_eq!(tokens_of(&bobs), [change_of(&bob_ws1.consistency_token)]);
    assert_eq!(bobs[0].deltas.len(), 1);

    let ws2s = changes_through(&mut of_ws2, end).await;
    assert_eq!(
        tokens_of(&ws2s),
        [change_of(&carol_ws2.consistency_token), change_of(&deleted.consistency_token)]
    );
    let deletion: Vec<bool> = ws2s[1]
        .deltas
        .iter()
        .map(|d| match d.delta.as_ref().unwrap() {
            Delta::GrantChanged(g) => g.user_id == carol.id && g.workspace_id == ws2,
            Delta::WorkspaceDeleted(w) => w.workspace_id == ws2,
            _ => false,
        })
        .collect();
    assert_eq!(deletion, [true, true], "{:?}", ws2s[1]);

    // Both filters at once: what touches Bob and workspace two; nothing here.
    let both = changes_through(&mut of_bob_on_ws2, end).await;
    assert!(both.is_empty(), "{both:#?}");
    app.stop().await;
}

/// The changes a stream sent, as their tokens name them.
fn tokens_of(changes: &[pb::Change]) -> Vec<(String, u64)> {
    changes.iter().map(|c| change_of(&c.consistency_token)).collect()
}

async fn malformed_requests_are_invalid_arguments_naming_the_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let other = app.create_org(&owner, "Other").await;
    let other_token = app
        .team
        .clone()
        .create_workspace(owner.req(pb::CreateWorkspaceRequest {
            organization_id: other.clone(),
            display_name: "w".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .consistency_token;
    let before = app.snapshot().await;
    let mut client = watcher(&app);
    let future =
        ChangeToken { organization: None, position: Some(roster::domain::LogPosition(1_000_000)) };
    for (req, field) in [
        (request("not-a-token", ""), "start_token"),
        (request("v1.1795816967416924", &org), "start_token"),
        (request(&other_token, &org), "start_token"),
        (request(&future.encode(), ""), "start_token"),
        (request("", "not-a-uuid"), "organization_id"),
        (pb::WatchRequest { user_id: "x".repeat(300), ..Default::default() }, "user_id"),
        (pb::WatchRequest { workspace_id: "nope".into(), ..Default::default() }, "workspace_id"),
    ] {
        let outcome = client.watch(req.clone()).await.map(|_| ());
        assert_code(outcome, Code::InvalidArgument, Some(field));
    }
    // A token of another organization is fine for a stream of every organization.
    let mut every = open(&mut client, request(&other_token, "")).await;
    assert!(next(&mut every).await.is_ok());
    for (req, field) in [
        (pb::SnapshotRequest { organization_id: org.clone(), page_size: -1 }, "page_size"),
        (pb::SnapshotRequest { organization_id: org.clone(), page_size: 1001 }, "page_size"),
        (pb::SnapshotRequest { organization_id: String::new(), page_size: 0 }, "organization_id"),
    ] {
        assert_code(client.snapshot(req).await.map(|_| ()), Code::InvalidArgument, Some(field));
    }
    assert_eq!(app.snapshot().await, before, "a refused call changes nothing");
    app.stop().await;
}

/// The google.rpc.ErrorInfo metadata value of a status.
fn error_info(status: &Status, key: &str) -> String {
    let details = status.get_error_details();
    let info = details.error_info().unwrap_or_else(|| panic!("an ErrorInfo: {status:?}"));
    info.metadata.get(key).cloned().unwrap_or_else(|| panic!("{key} in {info:?}"))
}

async fn a_token_older_than_the_retention_is_out_of_range_saying_how_far_back_the_log_goes(
    backend: Backend,
) {
    let app =
        spawn_app_with(backend, |config| config.change_retention = Duration::from_secs(2)).await;
    let owner = User::new("owner");
    let (org, created_token) = found(&app, &owner, "Acme").await;
    app.create_workspace(&owner, &org, "one").await;
    app.create_workspace(&owner, &org, "two").await;
    let end = head(&app).await;
    // The retention task removes them once they are two seconds old.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, pruned) = roster::storage::changelog::head(&app.db).await.unwrap();
        if pruned.0 == end {
            break;
        }
        assert!(Instant::now() < deadline, "retention removed old changes (pruned {})", pruned.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.count("change_log").await, 0);

    let mut client = watcher(&app);
    // An organization whose latest change retention removed still has a snapshot, and a
    // stream of it from now starts.
    let pages = collect_snapshot(&mut client, &org, 0).await;
    assert_eq!(pages.iter().map(|p| p.workspaces.len()).sum::<usize>(), 2);
    drop(open(&mut client, request("", &org)).await);
    for org_filter in ["", org.as_str()] {
        let status = client.watch(request(&created_token, org_filter)).await.unwrap_err();
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
        assert!(status.message().contains("kept for 2s"), "{}", status.message());
        let oldest = error_info(&status, "oldest_token");
        assert_eq!(position(&oldest), end, "the oldest token that still works");
        assert!(status.message().contains(&oldest));
    }
    // From the oldest token the stream works, and shows what comes next.
    let oldest =
        ChangeToken { organization: None, position: Some(roster::domain::LogPosition(end)) }
            .encode();
    let mut stream = open(&mut client, request(&oldest, &org)).await;
    let renamed = app.create_workspace(&owner, &org, "three").await;
    let next_changes = changes_through(&mut stream, end + 1).await;
    assert!(
        matches!(&next_changes[0].deltas[0].delta, Some(Delta::WorkspaceCreated(w)) if w.workspace_id == renamed)
    );
    app.stop().await;
}

async fn a_consumer_that_falls_behind_is_cut_off_with_its_last_token_and_resumes_from_it(
    backend: Backend,
) {
    let app = spawn_app_with(backend, |config| config.watch_buffer = 20).await;
    let owner = User::new("owner");
    let (org, created_token) = found(&app, &owner, "Acme").await;
    // A consumer with a small HTTP/2 window that reads nothing for a while: the server's
    // buffer for it fills.
    let slow = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .initial_stream_window_size(1024)
        .connect()
        .await
        .unwrap();
    let mut slow_client = WatchServiceClient::new(slow);
    let mut stream = open(&mut slow_client, request(&created_token, &org)).await;
    // Open once the first checkpoint has come: from then on the stream is live.
    assert!(next(&mut stream).await.is_ok());
    let mut written = Vec::new();
    let mut team = app.team.clone();
    for i in 0..120 {
        let reply = team
            .create_workspace(owner.req(pb::CreateWorkspaceRequest {
                organization_id: org.clone(),
                display_name: format!("a workspace with a long name, to fill the window {i}"),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        written.push(placed(&app.db, &reply.consistency_token).await);
    }
    let mut seen = Vec::new();
    let mut last = created_token.clone();
    let status = loop {
        match next(&mut stream).await {
            Ok(response) => {
                seen.extend(positions(&response.changes));
                last = response.token;
            }
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(error_info(&status, "last_token"), last, "the last token delivered");
    assert!(status.message().contains(&last), "{}", status.message());
    assert!(seen.len() < written.len(), "cut off before the end");
    // Resumed from that token on an ordinary channel, nothing is lost or repeated.
    let mut client = watcher(&app);
    let mut resumed = open(&mut client, request(&last, &org)).await;
    seen.extend(positions(&changes_through(&mut resumed, *written.last().unwrap()).await));
    assert_eq!(seen, written);
    app.stop().await;
}

async fn streams_hold_no_in_flight_slot_outlive_the_call_deadline_and_have_their_own_limit(
    backend: Backend,
) {
    let app = spawn_app_with(backend, |config| {
        config.max_in_flight = 1;
        // Long enough for a write on a busy machine; the stream is read well past it.
        config.request_timeout_ms = 1500;
        config.max_watch_streams = 2;
    })
    .await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let mut client = watcher(&app);
    let mut first = open(&mut client, request("", &org)).await;
    let second = open(&mut client, request("", "")).await;
    let third = client.watch(request("", "")).await.map(|_| ());
    assert_code(third, Code::ResourceExhausted, None);
    let snapshot =
        client.snapshot(pb::SnapshotRequest { organization_id: org.clone(), page_size: 0 });
    assert_code(snapshot.await.map(|_| ()), Code::ResourceExhausted, None);
    // The single in-flight slot is free for calls.
    app.create_workspace(&owner, &org, "prod").await;
    // Past the 1.5 s deadline the stream goes on.
    let started = Instant::now();
    let mut changes = Vec::new();
    while started.elapsed() < Duration::from_millis(4000) {
        changes.extend(next(&mut first).await.expect("the stream outlives the deadline").changes);
    }
    assert_eq!(changes.len(), 1, "the workspace's creation");
    // A stream that ends gives its slot back.
    drop(second);
    let deadline = Instant::now() + PATIENCE;
    loop {
        match client.watch(request("", "")).await {
            Ok(_) => break,
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted),
        }
        assert!(Instant::now() < deadline, "the slot came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}

async fn stopping_the_server_ends_its_streams_with_a_token_to_resume_from(backend: Backend) {
    let app = spawn_app_with(backend, |config| config.shutdown_grace_secs = 20).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let mut client = watcher(&app);
    let mut stream = open(&mut client, request("", &org)).await;
    let checkpoint = next(&mut stream).await.unwrap();
    let started = Instant::now();
    app.stop().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the server stopped in {took:?}, not at the end of its grace"
    );
    let status = loop {
        match next(&mut stream).await {
            Ok(_) => continue,
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(position(&error_info(&status, "last_token")), position(&checkpoint.token));
}

async fn watch_and_snapshot_need_a_service_credential(backend: Backend) {
    use crate::auth::{JwtSetup, SECRET, bearer, claims, create_org, sign_hs};
    let setup = JwtSetup::new();
    let app = setup.spawn_hs(backend).await;
    let user = sign_hs(&claims("dave", "dave@example.com"), SECRET);
    let org = create_org(&app, &user).await.unwrap();
    let mut client = watcher(&app);
    assert_code(client.watch(request("", &org)).await.map(|_| ()), Code::Unauthenticated, None);
    assert_code(
        client.watch(bearer("rst_not-a-known-token", request("", &org))).await.map(|_| ()),
        Code::Unauthenticated,
        None,
    );
    assert_code(
        client.watch(bearer(&user, request("", &org))).await.map(|_| ()),
        Code::PermissionDenied,
        None,
    );
    let snapshot = || pb::SnapshotRequest { organization_id: org.clone(), page_size: 0 };
    assert_code(client.snapshot(snapshot()).await.map(|_| ()), Code::Unauthenticated, None);
    assert_code(
        client.snapshot(bearer(&user, snapshot())).await.map(|_| ()),
        Code::PermissionDenied,
        None,
    );
    let mut stream =
        client.watch(bearer(&setup.service_token, request("", &org))).await.unwrap().into_inner();
    assert!(next(&mut stream).await.is_ok());
    let mut pages =
        client.snapshot(bearer(&setup.service_token, snapshot())).await.unwrap().into_inner();
    let page = pages.message().await.unwrap().unwrap();
    assert_eq!(page.members.len(), 1);
    // Health and reflection stay open.
    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel());
    let served = health
        .check(tonic_health::pb::HealthCheckRequest { service: "roster.v1.WatchService".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(served.status, 1, "WatchService reports SERVING");
    app.stop().await;
}

/// Reads a stream into `seen` until it reaches `through` or ends; keeps the last token read.
async fn read_until(
    stream: &mut Streaming<pb::WatchResponse>,
    seen: &mut Vec<u64>,
    last: &mut String,
    through: u64,
) -> Result<(), Status> {
    loop {
        let response = match tokio::time::timeout(PATIENCE, stream.message()).await {
            Ok(Ok(Some(response))) => response,
            Ok(Ok(None)) => return Err(Status::unknown("the stream ended")),
            Ok(Err(status)) => return Err(status),
            Err(_) => panic!("nothing arrived within {PATIENCE:?}"),
        };
        seen.extend(positions(&response.changes));
        *last = response.token;
        if position(last) >= through {
            return Ok(());
        }
    }
}

/// Creates a workspace; the position of the change.
async fn write(
    db: &sea_orm::DatabaseConnection,
    team: &mut roster::pb::team_service_client::TeamServiceClient<Channel>,
    owner: &User,
    org: &str,
    name: &str,
) -> u64 {
    let request = owner.req(pb::CreateWorkspaceRequest {
        organization_id: org.to_owned(),
        display_name: name.to_owned(),
        ..Default::default()
    });
    let reply = team.create_workspace(request).await.unwrap().into_inner();
    placed(db, &reply.consistency_token).await
}

async fn a_consumer_resumes_across_a_killed_server_with_nothing_lost_or_repeated(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (database_url, database) = fresh_database(backend, dir.path()).await;
    let sink = SmtpSink::start().await;
    let log = dir.path().join("server.log");
    let server = Server::start(&database_url, sink.port, &log).await;
    let db = sea_orm::Database::connect(&database_url).await.unwrap();
    let owner = User::new("owner");
    let mut team = server.team().await;
    let org = create_org_with(&mut team, &owner, "Acme").await;
    // The organization's creation is the log's first position once placed.
    roster::storage::changelog::place(&db).await.unwrap();
    let start =
        ChangeToken { organization: None, position: Some(roster::domain::LogPosition(1)) }.encode();
    let mut watch = server.watch().await;
    let mut stream = watch.watch(request(&start, "")).await.unwrap().into_inner();
    let mut written = Vec::new();
    for i in 0..10 {
        written.push(write(&db, &mut team, &owner, &org, &format!("w{i}")).await);
    }
    let (mut seen, mut last) = (Vec::new(), start.clone());
    read_until(&mut stream, &mut seen, &mut last, written[5]).await.unwrap();
    for i in 10..15 {
        written.push(write(&db, &mut team, &owner, &org, &format!("w{i}")).await);
    }
    // Killed with changes sent on the stream but not read.
    server.kill_hard();
    let outcome = read_until(&mut stream, &mut seen, &mut last, u64::MAX).await;
    assert!(outcome.is_err(), "the stream ends with its server");
    let server = Server::start(&database_url, sink.port, &log).await;
    let mut team = server.team().await;
    let mut watch = server.watch().await;
    let mut stream = watch.watch(request(&last, "")).await.unwrap().into_inner();
    for i in 15..20 {
        written.push(write(&db, &mut team, &owner, &org, &format!("w{i}")).await);
    }
    read_until(&mut stream, &mut seen, &mut last, *written.last().unwrap()).await.unwrap();
    assert_eq!(seen, (2..=21).collect::<Vec<u64>>(), "every change once, in order");
    assert_eq!(seen, written);
    db.close().await.unwrap();
    server.stop();
    drop_database(database).await;
}

/// Changes through one replica reach a Watch stream on another, within a bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_replica_reaches_a_stream_on_another() {
    let dir = tempfile::tempdir().unwrap();
    let (database_url, database) = fresh_database(Backend::Postgres, dir.path()).await;
    let sink = SmtpSink::start().await;
    let a = Server::start(&database_url, sink.port, &dir.path().join("a.log")).await;
    let b = Server::start(&database_url, sink.port, &dir.path().join("b.log")).await;
    let db = sea_orm::Database::connect(&database_url).await.unwrap();
    let owner = User::new("owner");
    let mut team = a.team().await;
    let org = create_org_with(&mut team, &owner, "Acme").await;
    let mut watch = b.watch().await;
    let mut stream = watch.watch(request("", &org)).await.unwrap().into_inner();
    let mut delays = Vec::new();
    for i in 0..10 {
        let reply = team
            .create_workspace(owner.req(pb::CreateWorkspaceRequest {
                organization_id: org.clone(),
                display_name: format!("w{i}"),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        let committed = Instant::now();
        let changes =
            changes_through(&mut stream, placed(&db, &reply.consistency_token).await).await;
        delays.push(committed.elapsed());
        assert_eq!(tokens_of(&changes), [change_of(&reply.consistency_token)]);
    }
    delays.sort();
    println!(
        "replica B streamed replica A's changes after {:?} (median), {:?} (max)",
        delays[5], delays[9]
    );
    assert!(
        delays[9] < Duration::from_secs(2),
        "notifications, not the fallback poll, wake B: {delays:?}"
    );
    db.close().await.unwrap();
    a.stop();
    b.stop();
    drop_database(database).await;
}

/// A consumer that reconnects from its last token across a PostgreSQL restart sees every change
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_resumes_across_a_postgres_restart_with_nothing_lost_or_repeated() {
    let postgres = crate::common::postgres::PrivatePostgres::start();
    let url = postgres.url();
    // The server's database is the private server's; `app.db` names another.
    let app = spawn_app_with(Backend::Postgres, |config| config.database_url = url).await;
    let db = sea_orm::Database::connect(&postgres.url()).await.unwrap();
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    // The organization's creation is the log's first position once placed.
    roster::storage::changelog::place(&db).await.unwrap();
    let start =
        ChangeToken { organization: None, position: Some(roster::domain::LogPosition(1)) }.encode();
    let mut client = watcher(&app);
    let mut stream = open(&mut client, request(&start, "")).await;
    let mut written = Vec::new();
    for i in 0..5 {
        let reply = app
            .team
            .clone()
            .create_workspace(owner.req(pb::CreateWorkspaceRequest {
                organization_id: org.clone(),
                display_name: format!("before {i}"),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        written.push(placed(&db, &reply.consistency_token).await);
    }
    let (mut seen, mut last) = (Vec::new(), start);
    read_until(&mut stream, &mut seen, &mut last, written[2]).await.unwrap();

    postgres.down();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_code(app.try_create_workspace(&owner, &org, "down").await, Code::Unavailable, None);
    postgres.up();
    // Writes succeed again once the pool reconnects.
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..5 {
        loop {
            match app.try_create_workspace(&owner, &org, &format!("after {i}")).await {
                Ok(_) => break,
                Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
            }
            assert!(Instant::now() < deadline, "PostgreSQL came back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The last change gets its position just after its reply.
    let end = loop {
        let end = roster::storage::changelog::head(&db).await.unwrap().0.0;
        if end >= 11 || Instant::now() >= deadline {
            break end;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    db.close().await.unwrap();
    assert_eq!(end, 11, "five before, five after, and the creation");
    // The stream may have survived the restart, or ended: either way the consumer goes on from
    // its last token.
    let mut reconnects = 0;
    let mut open_stream = Some(stream);
    loop {
        if let Some(stream) = open_stream.as_mut() {
            match read_until(stream, &mut seen, &mut last, end).await {
                Ok(()) => break,
                Err(status) => println!("the stream ended: {status:?}"),
            }
        }
        reconnects += 1;
        assert!(reconnects < 50, "the consumer could not resume");
        tokio::time::sleep(Duration::from_millis(200)).await;
        open_stream = match client.watch(request(&last, "")).await {
            Ok(reopened) => Some(reopened.into_inner()),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                None
            }
        };
    }
    println!("the consumer reconnected {reconnects} times");
    assert_eq!(seen, (2..=end).collect::<Vec<u64>>(), "every change once, in order");
    app.stop().await;
    drop(postgres);
}
