//! Hostile input: generated requests with empty, huge, malformed, control-character and
//! injection-shaped fields, unknown enum numbers, wild page sizes and forged page tokens, and raw
//! bytes that are not valid protobuf. Never a panic, never INTERNAL or UNKNOWN, and a rejected
//! call changes nothing.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as ProptestConfig, TestRng, TestRunner};
use roster::pb;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Code, Request, Status};

use crate::common::{Backend, TestApp, User, spawn_app};
use crate::db_tests;

db_tests!(
    generated_hostile_requests_never_break_the_server,
    undecodable_messages_are_invalid_argument
);

/// Strings an attacker or a buggy client might send.
fn hostile_string(valid: Vec<String>) -> impl Strategy<Value = String> {
    prop_oneof![
        8 => proptest::sample::select(valid),
        1 => Just(String::new()),
        1 => Just(" ".repeat(3)),
        1 => "\\PC{0,40}",
        1 => "[\\x00-\\x1f\\x7f]{1,12}",
        1 => "[0-9a-fA-F-]{30,40}",
        1 => Just("'; DROP TABLE members; --".to_owned()),
        1 => Just("\" OR 1=1 --".to_owned()),
        1 => Just("x".repeat(1 << 20)),
        1 => Just("é".repeat(201)),
        1 => Just("a@b".to_owned()),
        1 => Just("..@..".to_owned()),
    ]
}

fn any_enum() -> impl Strategy<Value = i32> {
    prop_oneof![0..6i32, any::<i32>()]
}

fn any_page_size() -> impl Strategy<Value = i32> {
    prop_oneof![Just(0), Just(-1), Just(1001), Just(i32::MIN), Just(i32::MAX), 1..20i32]
}

#[derive(Debug, Clone)]
enum Call {
    CreateOrganization(pb::CreateOrganizationRequest),
    GetOrganization(pb::GetOrganizationRequest),
    CreateWorkspace(pb::CreateWorkspaceRequest),
    UpdateMemberRole(pb::UpdateMemberRoleRequest),
    CreateInvitation(pb::CreateInvitationRequest),
    ListMembers(pb::ListMembersRequest),
    ListWorkspaceAccess(pb::ListWorkspaceAccessRequest),
    AcceptInvitation(pb::AcceptInvitationRequest),
    Authorize(pb::AuthorizeRequest),
    BatchAuthorize(pb::BatchAuthorizeRequest),
}

fn calls(valid: Vec<String>) -> impl Strategy<Value = Call> {
    let s = move || hostile_string(valid.clone());
    prop_oneof![
        s().prop_map(|display_name| Call::CreateOrganization(pb::CreateOrganizationRequest {
            display_name,
            ..Default::default()
        })),
        s().prop_map(|organization_id| Call::GetOrganization(pb::GetOrganizationRequest {
            organization_id
        })),
        (s(), s()).prop_map(|(organization_id, display_name)| Call::CreateWorkspace(
            pb::CreateWorkspaceRequest { organization_id, display_name, ..Default::default() }
        )),
        (s(), s(), any_enum()).prop_map(|(organization_id, user_id, role)| Call::UpdateMemberRole(
            pb::UpdateMemberRoleRequest { organization_id, user_id, role, ..Default::default() }
        )),
        (s(), s(), any_enum(), s(), any_enum()).prop_map(
            |(organization_id, email, role, workspace_id, access)| {
                Call::CreateInvitation(pb::CreateInvitationRequest {
                    organization_id,
                    email,
                    role,
                    workspace_grants: vec![pb::InvitationWorkspaceGrant {
                        workspace_id,
                        access,
                        ..Default::default()
                    }],
                    ..Default::default()
                })
            }
        ),
        (s(), any_page_size(), s()).prop_map(|(organization_id, page_size, page_token)| {
            Call::ListMembers(pb::ListMembersRequest { organization_id, page_size, page_token })
        }),
        (s(), s(), s(), any_page_size(), s()).prop_map(
            |(organization_id, workspace_id, user_id, page_size, page_token)| {
                Call::ListWorkspaceAccess(pb::ListWorkspaceAccessRequest {
                    organization_id,
                    workspace_id,
                    user_id,
                    page_size,
                    page_token,
                })
            }
        ),
        s().prop_map(|token| Call::AcceptInvitation(pb::AcceptInvitationRequest {
            token,
            ..Default::default()
        })),
        (s(), s(), s(), s()).prop_map(|(user_id, organization_id, workspace_id, permission)| {
            Call::Authorize(pb::AuthorizeRequest {
                consistency: None,
                user_id,
                organization_id,
                workspace_id,
                permission,
            })
        }),
        proptest::collection::vec((s(), s(), s(), s()), 0..4).prop_map(|checks| {
            Call::BatchAuthorize(pb::BatchAuthorizeRequest {
                consistency: None,
                checks: checks
                    .into_iter()
                    .map(|(user_id, organization_id, workspace_id, permission)| {
                        pb::AuthorizeRequest {
                            consistency: None,
                            user_id,
                            organization_id,
                            workspace_id,
                            permission,
                        }
                    })
                    .collect(),
            })
        }),
    ]
}

async fn run(app: &TestApp, user: &User, call: Call) -> Result<(), Status> {
    let (mut team, mut access) = (app.team.clone(), app.access.clone());
    let done = |r: Result<tonic::Response<()>, Status>| r.map(|_| ());
    match call {
        Call::CreateOrganization(m) => {
            done(team.create_organization(user.req(m)).await.map(|r| r.map(|_| ())))
        }
        Call::GetOrganization(m) => {
            done(team.get_organization(user.req(m)).await.map(|r| r.map(|_| ())))
        }
        Call::CreateWorkspace(m) => {
            done(team.create_workspace(user.req(m)).await.map(|r| r.map(|_| ())))
        }
        Call::UpdateMemberRole(m) => {
            done(team.update_member_role(user.req(m)).await.map(|r| r.map(|_| ())))
        }
        Call::CreateInvitation(m) => {
            done(team.create_invitation(user.req(m)).await.map(|r| r.map(|_| ())))
        }
        Call::ListMembers(m) => done(team.list_members(user.req(m)).await.map(|r| r.map(|_| ()))),
        Call::ListWorkspaceAccess(m) => {
            done(team.list_workspace_access(user.req(m)).await.map(|r| r.map(|_| ())))
        }
        Call::AcceptInvitation(m) => {
            done(team.accept_invitation(user.req(m)).await.map(|r| r.map(|_| ())))
        }
        Call::Authorize(m) => done(access.authorize(Request::new(m)).await.map(|r| r.map(|_| ()))),
        Call::BatchAuthorize(m) => {
            done(access.batch_authorize(Request::new(m)).await.map(|r| r.map(|_| ())))
        }
    }
}

fn describe(call: &Call) -> String {
    let text = format!("{call:?}");
    if text.len() > 300 {
        format!("{}… ({} bytes)", &text[..text.floor_char_boundary(300)], text.len())
    } else {
        text
    }
}

async fn generated_hostile_requests_never_break_the_server(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    let org = app.create_org(&owner, "Acme").await;
    let ws = app.create_workspace(&owner, &org, "prod").await;
    let valid = vec![
        org.clone(),
        ws.clone(),
        owner.id.clone(),
        "sources.read".into(),
        "member@example.com".into(),
    ];
    let strategy = calls(valid);
    let mut runner = TestRunner::new_with_rng(
        ProptestConfig::default(),
        TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
    );
    let mut codes = std::collections::BTreeMap::new();
    for case in 0..300 {
        let call = strategy.new_tree(&mut runner).unwrap().current();
        let before = app.snapshot().await;
        let result = run(&app, &owner, call.clone()).await;
        let code = match &result {
            Ok(()) => Code::Ok,
            Err(status) => status.code(),
        };
        *codes.entry(format!("{code:?}")).or_insert(0) += 1;
        assert!(
            !matches!(code, Code::Internal | Code::Unknown | Code::Unavailable),
            "case {case}: {} answered {result:?}",
            describe(&call)
        );
        if code != Code::Ok {
            assert_eq!(
                app.snapshot().await,
                before,
                "case {case}: rejected {} changed something",
                describe(&call)
            );
        }
    }
    println!("outcomes of 300 generated requests: {codes:?}");
    assert!(codes.contains_key("InvalidArgument"), "the generator reaches the validators");
    // The server is still healthy and answers correctly.
    assert!(app.allowed(&owner.id, &org, &ws, "sources.delete").await);
    app.stop().await;
}

/// A CreateOrganizationRequest whose display_name carries arbitrary bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct RawName {
    #[prost(bytes = "vec", tag = "1")]
    display_name: Vec<u8>,
}

/// A message whose field 1 has the wrong wire type for a string.
#[derive(Clone, PartialEq, prost::Message)]
struct WrongWireType {
    #[prost(uint64, tag = "1")]
    display_name: u64,
}

async fn raw_call<M: prost::Message + Send + Sync + 'static>(
    app: &TestApp,
    user: &User,
    path: &'static str,
    message: M,
) -> Status {
    let mut grpc = tonic::client::Grpc::new(app.channel());
    grpc.ready().await.unwrap();
    let codec: tonic_prost::ProstCodec<M, pb::CreateOrganizationResponse> = Default::default();
    grpc.unary(user.req(message), PathAndQuery::from_static(path), codec)
        .await
        .expect_err("must be refused")
}

async fn undecodable_messages_are_invalid_argument(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = User::new("owner");
    app.create_org(&owner, "Acme").await;
    let before = app.snapshot().await;
    let path = "/roster.v1.TeamService/CreateOrganization";
    let invalid_utf8 =
        raw_call(&app, &owner, path, RawName { display_name: vec![0x41, 0xff, 0xfe, 0x42] }).await;
    assert_eq!(invalid_utf8.code(), Code::InvalidArgument, "{invalid_utf8:?}");
    let wrong_type = raw_call(&app, &owner, path, WrongWireType { display_name: 7 }).await;
    assert_eq!(wrong_type.code(), Code::InvalidArgument, "{wrong_type:?}");
    let authorize = raw_call(
        &app,
        &owner,
        "/roster.v1.AccessService/Authorize",
        RawName { display_name: vec![0xc0, 0x80] },
    )
    .await;
    assert_eq!(authorize.code(), Code::InvalidArgument, "{authorize:?}");
    // A batch whose field 1 (the checks) comes as a number.
    let batch = raw_call(
        &app,
        &owner,
        "/roster.v1.AccessService/BatchAuthorize",
        WrongWireType { display_name: 7 },
    )
    .await;
    assert_eq!(batch.code(), Code::InvalidArgument, "{batch:?}");
    assert_eq!(app.snapshot().await, before);
    app.stop().await;
}
