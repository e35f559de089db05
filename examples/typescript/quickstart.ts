// Roster from TypeScript: create an organization and a workspace, invite a member, accept the
// invitation, grant workspace access, ask Authorize, and follow the grant through Watch.
//
// The client is generated from ../../proto by buf with protoc-gen-es (`npm run generate`) and
// speaks gRPC over HTTP/2 through @connectrpc/connect-node. Run it against a server in dev mode
// (identity from x-user-id / x-user-email) that writes invitation emails into a folder:
//
//   roster --listen 127.0.0.1:50051 --mail-dir /tmp/roster-mail
//   npx tsx quickstart.ts --target 127.0.0.1:50051 --mail-dir /tmp/roster-mail

import { randomUUID } from "node:crypto";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";

import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import {
  AccessService,
  ConsistencyRequirement,
  DecisionReason,
} from "./gen/roster/v1/access_service_pb.js";
import { OrganizationRole, WorkspaceAccess } from "./gen/roster/v1/resources_pb.js";
import { TeamService } from "./gen/roster/v1/team_service_pb.js";
import { WatchService } from "./gen/roster/v1/watch_service_pb.js";

const { values: args } = parseArgs({
  options: {
    target: { type: "string", default: "127.0.0.1:50051" },
    "mail-dir": { type: "string" },
  },
});
const mailDir = args["mail-dir"];
if (!mailDir) {
  throw new Error("--mail-dir is required: the folder the server writes invitation emails to");
}

// Dev-mode identity; with --auth jwt this would be an authorization header.
const asUser = (userId: string, email: string) => ({
  headers: { "x-user-id": userId, "x-user-email": email },
});

// The invitation code from the newest email to `recipient` in the server's mail folder.
async function invitationToken(recipient: string): Promise<string> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const emails = readdirSync(mailDir!)
      .filter((name) => name.endsWith(".eml"))
      .map((name) => join(mailDir!, name))
      .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
    for (const path of emails) {
      const text = readFileSync(path, "utf8");
      const code = /invitation code where asked:\r?\n(\S+)/.exec(text);
      if (text.includes(`To: ${recipient}`) && code) {
        return code[1];
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error(`no invitation email to ${recipient} in ${mailDir}`);
}

const transport = createGrpcTransport({ baseUrl: `http://${args.target}` });
const team = createClient(TeamService, transport);
const access = createClient(AccessService, transport);
const watch = createClient(WatchService, transport);

// Unique names, so that the example can run many times against one server.
const run = randomUUID().slice(0, 8);
const owner = { id: `alice-${run}`, email: `alice-${run}@example.com` };
const invitee = { id: `bob-${run}`, email: `bob-${run}@example.com` };

const { organization } = await team.createOrganization(
  { displayName: "Acme Data" },
  asUser(owner.id, owner.email),
);
console.log(`organization ${organization!.id} created; ${owner.id} is its Owner`);
const orgId = organization!.id;
const { workspace } = await team.createWorkspace(
  { organizationId: orgId, displayName: "production" },
  asUser(owner.id, owner.email),
);
console.log(`workspace ${workspace!.id} created`);

const { invitation } = await team.createInvitation(
  { organizationId: orgId, email: invitee.email, role: OrganizationRole.MEMBER },
  asUser(owner.id, owner.email),
);
console.log(`invitation ${invitation!.id} sent to ${invitation!.email}`);

const accepted = await team.acceptInvitation(
  { token: await invitationToken(invitee.email) },
  asUser(invitee.id, invitee.email),
);
console.log(`${accepted.member!.userId} joined as ${OrganizationRole[accepted.member!.role]}`);

// The change's consistency token makes the check see that change even on a replica that has
// not heard of it yet.
const check = (permission: string, consistencyToken: string) =>
  access.authorize({
    userId: invitee.id,
    organizationId: orgId,
    workspaceId: workspace!.id,
    permission,
    consistency: {
      requirement: ConsistencyRequirement.AT_LEAST_AS_FRESH,
      atLeastAsFresh: consistencyToken,
    },
  });

const before = await check("sources.read", accepted.consistencyToken);
console.log(
  `before the grant, sources.read: allowed=${before.allowed} (${DecisionReason[before.reason]})`,
);
const granted = await team.setWorkspaceAccess(
  {
    organizationId: orgId,
    workspaceId: workspace!.id,
    userId: invitee.id,
    access: WorkspaceAccess.READ,
  },
  asUser(owner.id, owner.email),
);
const read = await check("sources.read", granted.consistencyToken);
const write = await check("sources.create", granted.consistencyToken);
console.log(`after a READ grant, sources.read: allowed=${read.allowed} (${DecisionReason[read.reason]})`);
console.log(
  `after a READ grant, sources.create: allowed=${write.allowed} (${DecisionReason[write.reason]})`,
);

// Another service follows the same change through Watch, from the acceptance's token: the next
// change of the organization is the grant. The stream stays open (with a checkpoint every
// second) until the client aborts it.
const stop = new AbortController();
const timer = setTimeout(() => stop.abort(), 10_000);
type Followed = {
  revision: bigint;
  actor: string;
  organizationId: string;
  userId: string;
  oldAccess: WorkspaceAccess;
  newAccess: WorkspaceAccess;
};
let followed: Followed | undefined;
try {
  for await (const response of watch.watch(
    { startToken: accepted.consistencyToken, organizationId: orgId },
    { signal: stop.signal },
  )) {
    for (const change of response.changes) {
      for (const delta of change.deltas) {
        if (delta.delta.case === "grantChanged") {
          const grant = delta.delta.value;
          followed = {
            revision: change.revision,
            actor: change.actorUserId,
            organizationId: change.organizationId,
            userId: grant.userId,
            oldAccess: grant.oldAccess,
            newAccess: grant.newAccess,
          };
        }
      }
    }
    if (followed) {
      stop.abort();
      break;
    }
  }
} catch (err) {
  // Aborting the stream ends it with CANCELED; anything else is a failure.
  if (!followed || ConnectError.from(err).code !== Code.Canceled) {
    throw err;
  }
} finally {
  clearTimeout(timer);
}
if (!followed) {
  throw new Error("the grant did not arrive through Watch");
}
console.log(
  `watch: revision ${followed.revision} by ${followed.actor}: ${followed.userId} ` +
    `${WorkspaceAccess[followed.oldAccess]} -> ${WorkspaceAccess[followed.newAccess]}`,
);
const followedOk =
  followed.organizationId === orgId &&
  followed.userId === invitee.id &&
  followed.newAccess === WorkspaceAccess.READ;

let malformedRejected = false;
try {
  await access.authorize({ userId: invitee.id, organizationId: orgId, permission: "sources.read" });
} catch (err) {
  const error = ConnectError.from(err);
  console.log(`a malformed check is ${Code[error.code]}: ${error.rawMessage}`);
  malformedRejected = error.code === Code.InvalidArgument;
}

const ok = !before.allowed && read.allowed && !write.allowed && malformedRejected && followedOk;
console.log(ok ? "quickstart: OK" : "quickstart: unexpected decisions");
process.exit(ok ? 0 : 1);
