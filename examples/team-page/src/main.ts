// The Organization Team page: members with their roles and workspace access, Invite Member
// (several at once), pending invitations with Resend and Revoke. It calls TeamService as the
// signed-in user over gRPC-Web, and shows or hides each action from ListMyPermissions.
//
// URL parameters: `server` (Roster's address, such as http://127.0.0.1:50051), `token` (a JWT;
// otherwise asked for), `org` (the organization shown), `accept` (an invitation token: the
// link in an invitation email).

import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { BinaryReader } from "@bufbuild/protobuf/wire";

import {
  InvitationState,
  OrganizationRole,
  WorkspaceAccess,
  type Invitation,
  type Member,
  type Workspace,
  type WorkspaceGrant,
} from "../gen/roster/v1/resources_pb.js";
import { TeamService } from "../gen/roster/v1/team_service_pb.js";

const params = new URL(location.href).searchParams;
const server = params.get("server") ?? location.origin;
let jwt = params.get("token") ?? sessionStorage.getItem("roster-jwt") ?? "";

// Every call carries the user's token and a fresh x-request-id, which the server echoes, logs
// and keeps in the audit event: what support asks for when an error is reported.
const credentials: Interceptor = (next) => async (req) => {
  req.header.set("authorization", `Bearer ${jwt}`);
  req.header.set("x-request-id", crypto.randomUUID());
  return next(req);
};
const team = createClient(
  TeamService,
  createGrpcWebTransport({ baseUrl: server, interceptors: [credentials] }),
);

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

const roleNames: Record<number, string> = {
  [OrganizationRole.OWNER]: "Owner",
  [OrganizationRole.ADMIN]: "Admin",
  [OrganizationRole.BILLING]: "Billing",
  [OrganizationRole.MEMBER]: "Member",
};
const accessNames: Record<number, string> = {
  [WorkspaceAccess.NONE]: "—",
  [WorkspaceAccess.READ]: "READ",
  [WorkspaceAccess.WRITE]: "WRITE",
};

// ---- errors, with the fields the server named

interface FieldViolation {
  field: string;
  description: string;
}

// google.rpc.BadRequest: repeated FieldViolation field_violations = 1 (field = 1,
// description = 2), read straight off the wire.
function badRequest(bytes: Uint8Array): FieldViolation[] {
  const violations: FieldViolation[] = [];
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [number, wireType] = reader.tag();
    if (number !== 1) {
      reader.skip(wireType);
      continue;
    }
    const inner = new BinaryReader(reader.bytes());
    const violation = { field: "", description: "" };
    while (inner.pos < inner.len) {
      const [n, t] = inner.tag();
      if (n === 1) violation.field = inner.string();
      else if (n === 2) violation.description = inner.string();
      else inner.skip(t);
    }
    violations.push(violation);
  }
  return violations;
}

function describe(code: Code | number, message: string, details: { type: string; value: Uint8Array }[]) {
  const fields = details
    .filter((d) => d.type === "google.rpc.BadRequest")
    .flatMap((d) => badRequest(d.value))
    .map((v) => `${v.field}: ${v.description}`);
  return [`${Code[code] ?? code}: ${message}`, ...fields].join("\n");
}

function showError(err: unknown) {
  const box = $("error");
  if (err instanceof ConnectError) {
    const details = err.details.filter(
      (d): d is { type: string; value: Uint8Array } => "type" in d && d.value instanceof Uint8Array,
    );
    box.textContent = describe(err.code, err.rawMessage, details);
  } else {
    box.textContent = String(err);
  }
  box.hidden = false;
}

function notice(text: string) {
  $("notice").textContent = text;
  $("notice").hidden = false;
}

// A user action: its errors are shown, and its change carries one request_id however many
// times the browser sends it.
async function act(what: () => Promise<void>) {
  $("error").hidden = true;
  try {
    await what();
  } catch (err) {
    showError(err);
  }
}

// ---- the page

let org = params.get("org") ?? "";
let permissions = new Set<string>();
let myRole = OrganizationRole.UNSPECIFIED;

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.append(...children);
  return node;
}

function roleSelect(current: number, testid: string): HTMLSelectElement {
  const select = el("select", { "data-testid": testid });
  // Only an Owner may make anyone Owner (rule 1).
  const offered = [OrganizationRole.ADMIN, OrganizationRole.BILLING, OrganizationRole.MEMBER];
  if (myRole === OrganizationRole.OWNER) offered.unshift(OrganizationRole.OWNER);
  for (const role of offered) {
    const option = el("option", { value: String(role) }, roleNames[role]);
    option.selected = role === current;
    select.append(option);
  }
  return select;
}

function accessSelect(current: number, testid: string): HTMLSelectElement {
  const select = el("select", { "data-testid": testid });
  for (const access of [WorkspaceAccess.NONE, WorkspaceAccess.READ, WorkspaceAccess.WRITE]) {
    const option = el("option", { value: String(access) }, accessNames[access]);
    option.selected = access === current;
    select.append(option);
  }
  return select;
}

async function render() {
  $("team").hidden = false;
  if (!org) {
    const { organizations } = await team.listOrganizations({ pageSize: 100 });
    if (organizations.length === 0) {
      $("org-name").textContent = "No organization yet";
      $("create-org").hidden = false;
      return;
    }
    org = organizations[0].id;
  }
  $("create-org").hidden = true;
  const [{ organization }, mine] = await Promise.all([
    team.getOrganization({ organizationId: org }),
    team.listMyPermissions({ organizationId: org }),
  ]);
  permissions = new Set(mine.permissions);
  myRole = mine.role;
  $("org-name").textContent = organization?.displayName ?? "";
  $("me").textContent = `You are ${roleNames[myRole]} here.`;
  $("create-workspace").hidden = !permissions.has("workspaces.create");

  const [{ members }, { workspaces }, { grants }] = await Promise.all([
    team.listMembers({ organizationId: org, pageSize: 1000 }),
    team.listWorkspaces({ organizationId: org, pageSize: 1000 }),
    team.listWorkspaceAccess({ organizationId: org, pageSize: 1000 }),
  ]);
  renderMembers(members, workspaces, grants);
  renderInviteForm(workspaces);
  if (permissions.has("invitations.read")) {
    const { invitations } = await team.listInvitations({
      organizationId: org,
      state: InvitationState.PENDING,
      pageSize: 1000,
    });
    renderInvitations(invitations);
    $("invitations-section").hidden = false;
  } else {
    $("invitations-section").hidden = true;
  }
}

function renderMembers(members: Member[], workspaces: Workspace[], grants: WorkspaceGrant[]) {
  const table = $("members");
  table.replaceChildren(
    el("tr", {}, el("th", {}, "Member"), el("th", {}, "Role"),
      ...workspaces.map((w) => el("th", {}, w.displayName)), el("th", {})),
  );
  const mayChangeRoles = permissions.has("members.update_role");
  const mayGrant = permissions.has("workspace_access.manage");
  const mayRemove = permissions.has("members.remove");
  for (const member of members) {
    const row = el("tr", { "data-testid": `member-${member.email}` });
    row.append(el("td", {}, member.email));
    const isOwner = member.role === OrganizationRole.OWNER;
    // An Admin may not change an Owner's role or remove an Owner (rule 1).
    const managed = !isOwner || myRole === OrganizationRole.OWNER;
    if (mayChangeRoles && managed) {
      const select = roleSelect(member.role, "role-select");
      const requestId = crypto.randomUUID();
      select.addEventListener("change", () =>
        act(async () => {
          await team.updateMemberRole({
            organizationId: org,
            userId: member.userId,
            role: Number(select.value),
            requestId,
          });
          await render();
        }),
      );
      row.append(el("td", {}, select));
    } else {
      row.append(el("td", { "data-testid": "role" }, roleNames[member.role]));
    }
    for (const workspace of workspaces) {
      const grant = grants.find((g) => g.userId === member.userId && g.workspaceId === workspace.id);
      const access = isOwner ? WorkspaceAccess.WRITE : (grant?.access ?? WorkspaceAccess.NONE);
      if (mayGrant && !isOwner) {
        const select = accessSelect(access, `access-${workspace.displayName}`);
        select.addEventListener("change", () =>
          act(async () => {
            await team.setWorkspaceAccess({
              organizationId: org,
              workspaceId: workspace.id,
              userId: member.userId,
              access: Number(select.value),
              requestId: crypto.randomUUID(),
            });
            await render();
          }),
        );
        row.append(el("td", {}, select));
      } else {
        row.append(el("td", { "data-testid": `access-${workspace.displayName}` }, accessNames[access]));
      }
    }
    const actions = el("td");
    if (mayRemove && managed && !isOwner) {
      const remove = el("button", { "data-testid": "remove" }, "Remove");
      const requestId = crypto.randomUUID();
      remove.addEventListener("click", () => {
        if (!confirm(`Remove ${member.email} from the organization?`)) return;
        act(async () => {
          await team.removeMember({ organizationId: org, userId: member.userId, requestId });
          await render();
        });
      });
      actions.append(remove);
    }
    row.append(actions);
    table.append(row);
  }
}

function renderInviteForm(workspaces: Workspace[]) {
  const mayInvite = permissions.has("members.invite");
  $("invite-section").hidden = !mayInvite;
  if (!mayInvite) return;
  const role = roleSelect(OrganizationRole.MEMBER, "invite-role");
  role.id = "invite-role";
  $("invite-role").replaceWith(role);
  $("invite-grants").replaceChildren(
    ...workspaces.map((w) => {
      const select = accessSelect(WorkspaceAccess.NONE, `invite-access-${w.displayName}`);
      select.setAttribute("data-workspace", w.id);
      return el("label", {}, `${w.displayName} `, select);
    }),
  );
}

function renderInvitations(invitations: Invitation[]) {
  const table = $("invitations");
  table.replaceChildren(
    el("tr", {}, el("th", {}, "Email"), el("th", {}, "Role"), el("th", {}, "Sent"),
      el("th", {}, "Expires"), el("th", {})),
  );
  for (const invitation of invitations) {
    const resend = el("button", { "data-testid": "resend" }, "Resend");
    const revoke = el("button", { "data-testid": "revoke" }, "Revoke");
    const resendId = crypto.randomUUID();
    const revokeId = crypto.randomUUID();
    resend.addEventListener("click", () =>
      act(async () => {
        await team.resendInvitation({ organizationId: org, invitationId: invitation.id, requestId: resendId });
        await render();
        notice(`Sent again to ${invitation.email}.`);
      }),
    );
    revoke.addEventListener("click", () => {
      if (!confirm(`Revoke the invitation of ${invitation.email}?`)) return;
      act(async () => {
        await team.revokeInvitation({ organizationId: org, invitationId: invitation.id, requestId: revokeId });
        await render();
        notice(`Revoked the invitation of ${invitation.email}.`);
      });
    });
    const expires = invitation.expireTime
      ? new Date(Number(invitation.expireTime.seconds) * 1000).toISOString().slice(0, 10)
      : "";
    table.append(
      el("tr", { "data-testid": `invitation-${invitation.email}` },
        el("td", {}, invitation.email), el("td", {}, roleNames[invitation.role]),
        el("td", { "data-testid": "send-count" }, String(invitation.sendCount)),
        el("td", {}, expires), el("td", {}, resend, " ", revoke)),
    );
  }
}

// One request_id per filled-in form: a double click or a retry sends the same one.
let inviteRequestId = crypto.randomUUID();
$("invite-emails").addEventListener("input", () => (inviteRequestId = crypto.randomUUID()));

$("invite-open").addEventListener("click", () => ($("invite").hidden = false));
$("invite").addEventListener("submit", (event) => {
  event.preventDefault();
  act(async () => {
    const emails = ($("invite-emails") as HTMLTextAreaElement).value
      .split("\n").map((e) => e.trim()).filter((e) => e !== "");
    const role = Number(($("invite-role") as HTMLSelectElement).value);
    const workspaceGrants = [...$("invite-grants").querySelectorAll("select")]
      .filter((s) => Number(s.value) !== WorkspaceAccess.NONE)
      .map((s) => ({ workspaceId: s.getAttribute("data-workspace") ?? "", access: Number(s.value) }));
    const { results } = await team.batchCreateInvitations({
      organizationId: org,
      invitations: emails.map((email) => ({ email, role, workspaceGrants })),
      requestId: inviteRequestId,
    });
    $("invite-results").replaceChildren(
      ...results.map((result, i) =>
        result.result.case === "invitation"
          ? el("li", { "data-testid": "invite-ok" }, `Invited ${result.result.value.email}`)
          : el("li", { "data-testid": "invite-failed", class: "error" },
              `${emails[i]}: ${describe(result.result.value?.code ?? 0, result.result.value?.message ?? "",
                result.result.value?.details.map((d) => ({ type: d.typeUrl.replace(/^.*\//, ""), value: d.value })) ?? [])}`),
      ),
    );
    await render();
  });
});

$("create-org").addEventListener("submit", (event) => {
  event.preventDefault();
  act(async () => {
    const { organization } = await team.createOrganization({
      displayName: ($("create-org-name") as HTMLInputElement).value,
      requestId: crypto.randomUUID(),
    });
    org = organization?.id ?? "";
    await render();
  });
});

$("create-workspace").addEventListener("submit", (event) => {
  event.preventDefault();
  act(async () => {
    await team.createWorkspace({
      organizationId: org,
      displayName: ($("create-workspace-name") as HTMLInputElement).value,
      requestId: crypto.randomUUID(),
    });
    ($("create-workspace-name") as HTMLInputElement).value = "";
    await render();
  });
});

$("signin-button").addEventListener("click", () => {
  jwt = ($("jwt") as HTMLTextAreaElement).value.trim();
  sessionStorage.setItem("roster-jwt", jwt);
  $("signin").hidden = true;
  void start();
});

async function start() {
  await act(async () => {
    const accept = params.get("accept");
    if (accept) {
      const { member } = await team.acceptInvitation({ token: accept, requestId: crypto.randomUUID() });
      org = member?.organizationId ?? org;
      notice(`Welcome: you joined as ${roleNames[member?.role ?? 0]}.`);
    }
    await render();
  });
  document.body.dataset.ready = "true";
}

if (jwt) {
  void start();
} else {
  $("signin").hidden = false;
}
