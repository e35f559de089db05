"""Roster from Python: create an organization and a workspace, invite a member, accept the
invitation, grant workspace access, ask Authorize, and follow the grant through Watch.

Run against a server in dev mode (identity from x-user-id / x-user-email metadata) that writes
invitation emails into a folder, which is where the invitee's token comes from:

    roster --listen 127.0.0.1:50051 --mail-dir /tmp/roster-mail
    python quickstart.py --target 127.0.0.1:50051 --mail-dir /tmp/roster-mail

The client code is generated from proto/ with grpcio-tools (see README.md in this folder).
"""

import argparse
import pathlib
import re
import sys
import time
import uuid

import grpc

sys.path.insert(0, str(pathlib.Path(__file__).parent / "gen"))
from roster.v1 import access_service_pb2 as access  # noqa: E402
from roster.v1 import access_service_pb2_grpc as access_grpc  # noqa: E402
from roster.v1 import resources_pb2 as resources  # noqa: E402
from roster.v1 import team_service_pb2 as team  # noqa: E402
from roster.v1 import team_service_pb2_grpc as team_grpc  # noqa: E402
from roster.v1 import watch_service_pb2 as watch  # noqa: E402
from roster.v1 import watch_service_pb2_grpc as watch_grpc  # noqa: E402


def as_user(user_id: str, email: str):
    """Dev-mode identity metadata; with --auth jwt this would be an authorization header."""
    return [("x-user-id", user_id), ("x-user-email", email)]


def invitation_token(mail_dir: pathlib.Path, recipient: str, timeout: float = 10.0) -> str:
    """The invitation code from the newest email to `recipient` in the server's mail folder."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for eml in sorted(mail_dir.glob("*.eml"), key=lambda p: p.stat().st_mtime, reverse=True):
            text = eml.read_text(encoding="utf-8", errors="replace")
            if f"To: {recipient}" in text:
                match = re.search(r"invitation code where asked:\r?\n(\S+)", text)
                if match:
                    return match.group(1)
        time.sleep(0.2)
    raise SystemExit(f"no invitation email to {recipient} in {mail_dir}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--mail-dir", type=pathlib.Path, required=True)
    args = parser.parse_args()

    # Unique names, so that the example can run many times against one server.
    run = uuid.uuid4().hex[:8]
    owner = ("alice-" + run, f"alice-{run}@example.com")
    invitee = ("bob-" + run, f"bob-{run}@example.com")

    with grpc.insecure_channel(args.target) as channel:
        teams = team_grpc.TeamServiceStub(channel)
        authz = access_grpc.AccessServiceStub(channel)
        changes = watch_grpc.WatchServiceStub(channel)

        org = teams.CreateOrganization(
            team.CreateOrganizationRequest(display_name="Acme Data"), metadata=as_user(*owner)
        ).organization
        print(f"organization {org.id} created; {owner[0]} is its Owner")
        workspace = teams.CreateWorkspace(
            team.CreateWorkspaceRequest(organization_id=org.id, display_name="production"),
            metadata=as_user(*owner),
        ).workspace
        print(f"workspace {workspace.id} created")

        invitation = teams.CreateInvitation(
            team.CreateInvitationRequest(
                organization_id=org.id,
                email=invitee[1],
                role=resources.ORGANIZATION_ROLE_MEMBER,
            ),
            metadata=as_user(*owner),
        ).invitation
        print(f"invitation {invitation.id} sent to {invitation.email}")

        token = invitation_token(args.mail_dir, invitee[1])
        accepted = teams.AcceptInvitation(
            team.AcceptInvitationRequest(token=token), metadata=as_user(*invitee)
        )
        print(f"{accepted.member.user_id} joined as {resources.OrganizationRole.Name(accepted.member.role)}")

        def check(permission: str, consistency_token: str) -> access.AuthorizeResponse:
            # The change's consistency token makes the check see that change even on a replica
            # that has not heard of it yet.
            return authz.Authorize(
                access.AuthorizeRequest(
                    user_id=invitee[0],
                    organization_id=org.id,
                    workspace_id=workspace.id,
                    permission=permission,
                    consistency=access.Consistency(
                        requirement=access.CONSISTENCY_REQUIREMENT_AT_LEAST_AS_FRESH,
                        at_least_as_fresh=consistency_token,
                    ),
                )
            )

        before = check("sources.read", accepted.consistency_token)
        print(f"before the grant, sources.read: allowed={before.allowed} ({access.DecisionReason.Name(before.reason)})")

        granted = teams.SetWorkspaceAccess(
            team.SetWorkspaceAccessRequest(
                organization_id=org.id,
                workspace_id=workspace.id,
                user_id=invitee[0],
                access=resources.WORKSPACE_ACCESS_READ,
            ),
            metadata=as_user(*owner),
        )
        read = check("sources.read", granted.consistency_token)
        write = check("sources.create", granted.consistency_token)
        print(f"after a READ grant, sources.read: allowed={read.allowed} ({access.DecisionReason.Name(read.reason)})")
        print(f"after a READ grant, sources.create: allowed={write.allowed} ({access.DecisionReason.Name(write.reason)})")

        # Another service follows the same change through Watch, from the acceptance's token:
        # the next change of the organization is the grant. The stream stays open (with a
        # checkpoint every second) until the client cancels it.
        followed = None
        stream = changes.Watch(
            watch.WatchRequest(start_token=accepted.consistency_token, organization_id=org.id),
            timeout=10,
        )
        for response in stream:
            for change in response.changes:
                for delta in change.deltas:
                    if delta.WhichOneof("delta") == "grant_changed":
                        followed = (change, delta.grant_changed)
            if followed:
                stream.cancel()
                break
        if followed is None:
            raise SystemExit("the grant did not arrive through Watch")
        change, grant = followed
        print(
            f"watch: revision {change.revision} by {change.actor_user_id}: {grant.user_id} "
            f"{resources.WorkspaceAccess.Name(grant.old_access)} -> "
            f"{resources.WorkspaceAccess.Name(grant.new_access)}"
        )
        followed_ok = (
            change.organization_id == org.id
            and grant.user_id == invitee[0]
            and grant.new_access == resources.WORKSPACE_ACCESS_READ
        )

        try:
            authz.Authorize(access.AuthorizeRequest(user_id=invitee[0], organization_id=org.id, permission="sources.read"))
            raise SystemExit("a workspace permission without a workspace was accepted")
        except grpc.RpcError as err:
            print(f"a malformed check is {err.code().name}: {err.details()}")
            if err.code() != grpc.StatusCode.INVALID_ARGUMENT:
                return 1

    ok = not before.allowed and read.allowed and not write.allowed and followed_ok
    print("quickstart: OK" if ok else "quickstart: unexpected decisions")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
