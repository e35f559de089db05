// The team page in a real browser against the real server: Debian's Chromium driven by
// playwright-core, Roster in jwt mode, the page served from another origin (so CORS is
// exercised), invitation emails received over SMTP by a sink this script runs.
//
// It plays the product docs' "production environment control" scenario: the Owner founds an
// organization with a production and a staging workspace and invites, in one batch, an Admin,
// two senior engineers (WRITE on production), a junior engineer and an analyst (READ), and a
// Billing user; resends one invitation and revokes another; each invitee accepts by the link in
// their email and sees the buttons their role allows. Screenshots of each role's view go to
// --screenshots. Exits non-zero at the first difference.
//
//   node test/browser.mjs --roster ../../target/debug/roster [--database-url URL] \
//     [--screenshots DIR]

import { spawn } from "node:child_process";
import { createHash, createHmac, randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { createServer as createTcpServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, extname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import { chromium } from "playwright-core";

const { values: args } = parseArgs({
  options: {
    roster: { type: "string" },
    "database-url": { type: "string" },
    screenshots: { type: "string", default: "screenshots" },
  },
});
if (!args.roster) throw new Error("--roster is required: the server binary");
const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "..", "dist");
mkdirSync(args.screenshots, { recursive: true });

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
  console.log(`ok: ${what}`);
}

async function freePort() {
  return new Promise((resolve) => {
    const probe = createTcpServer().listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

// ---- an SMTP server that keeps every message

const mail = [];
function smtpSink() {
  return new Promise((resolve) => {
    const server = createTcpServer((socket) => {
      let buffer = "";
      let inData = false;
      let message = "";
      socket.write("220 sink ready\r\n");
      socket.on("data", (chunk) => {
        buffer += chunk.toString("utf8");
        for (;;) {
          if (inData) {
            const end = buffer.indexOf("\r\n.\r\n");
            if (end < 0) return;
            message += buffer.slice(0, end);
            buffer = buffer.slice(end + 5);
            inData = false;
            mail.push(message);
            message = "";
            socket.write("250 kept\r\n");
            continue;
          }
          const eol = buffer.indexOf("\r\n");
          if (eol < 0) return;
          const line = buffer.slice(0, eol);
          buffer = buffer.slice(eol + 2);
          const verb = line.slice(0, 4).toUpperCase();
          if (verb === "EHLO" || verb === "HELO") socket.write("250 sink\r\n");
          else if (verb === "DATA") {
            inData = true;
            socket.write("354 go on\r\n");
          } else if (verb === "QUIT") {
            socket.end("221 bye\r\n");
            return;
          } else socket.write("250 ok\r\n");
        }
      });
    });
    server.listen(0, "127.0.0.1", () => resolve(server));
  });
}

// The accept link of the newest email to `to`, as a person would click it.
async function acceptLink(to, count = 1) {
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    const theirs = mail.filter((m) => new RegExp(`^To: .*${to}`, "mi").test(m));
    if (theirs.length >= count) {
      // Quoted-printable soft line breaks and escapes, as a mail client undoes them.
      const text = theirs[theirs.length - 1].replace(/=\r\n/g, "").replace(/=3D/g, "=");
      const link = /(http:\/\/127\.0\.0\.1:\d+\/index\.html\?[^\s"<>]*accept=[A-Za-z0-9_-]+)/.exec(text);
      if (link) return link[1].replace(/&amp;/g, "&");
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`no email with an accept link reached ${to}`);
}

// ---- JWTs as the identity provider would issue them (HS256)

const secret = randomBytes(32).toString("hex");
const b64 = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
function token(name) {
  const now = Math.floor(Date.now() / 1000);
  const body = b64({ alg: "HS256", typ: "JWT" }) + "." + b64({
    sub: name,
    email: `${name}@example.com`,
    email_verified: true,
    iss: "https://id.example.com",
    aud: "roster",
    iat: now,
    exp: now + 3600,
  });
  return body + "." + createHmac("sha256", secret).update(body).digest("base64url");
}

// ---- the page, from another origin than the server

const types = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css" };
function pageServer() {
  return new Promise((resolve) => {
    const server = createServer((req, res) => {
      const path = new URL(req.url, "http://page").pathname.replace(/^\/$/, "/index.html");
      try {
        const body = readFileSync(join(dist, path.replace(/\.\./g, "")));
        res.writeHead(200, { "content-type": types[extname(path)] ?? "application/octet-stream" });
        res.end(body);
      } catch {
        res.writeHead(404).end();
      }
    });
    server.listen(0, "127.0.0.1", () => resolve(server));
  });
}

// ---- the run

const sink = await smtpSink();
const page = await pageServer();
const pageOrigin = `http://127.0.0.1:${page.address().port}`;
const rosterPort = await freePort();
const rosterUrl = `http://127.0.0.1:${rosterPort}`;
const scratch = mkdtempSync(join(tmpdir(), "roster-page-"));
writeFileSync(join(scratch, "jwt-secret"), secret);
// jwt mode needs service credentials for AccessService; the page needs none of them.
const serviceToken = randomBytes(32).toString("hex");
writeFileSync(
  join(scratch, "service-tokens"),
  `page-test ${createHash("sha256").update(serviceToken).digest("hex")}\n`,
);
const rosterArgs = [
  "--listen", `127.0.0.1:${rosterPort}`,
  "--auth", "jwt",
  "--jwt-secret-file", join(scratch, "jwt-secret"),
  "--jwt-issuer", "https://id.example.com",
  "--jwt-audience", "roster",
  "--service-tokens-file", join(scratch, "service-tokens"),
  "--cors-allowed-origin", pageOrigin,
  "--smtp-url", `smtp://127.0.0.1:${sink.address().port}`,
  "--invite-url", `${pageOrigin}/index.html?server=${encodeURIComponent(rosterUrl)}&accept={token}`,
  "--database-url", args["database-url"] ?? `sqlite://${join(scratch, "roster.db")}?mode=rwc`,
];
const roster = spawn(resolve(args.roster), rosterArgs, {
  cwd: scratch,
  stdio: ["ignore", "inherit", "inherit"],
  env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" },
});
let exitCode = 1;
let rosterExited = false;
roster.on("exit", () => (rosterExited = true));
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
  ],
});
try {
  for (let i = 0; ; i++) {
    try {
      await fetch(rosterUrl, { method: "OPTIONS" });
      break;
    } catch {
      if (i > 100 || rosterExited) throw new Error("roster did not start");
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  // Opens the page as `name`; `link` is an accept link or the plain page.
  async function open(name, link) {
    const context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
    const tab = await context.newPage();
    tab.on("dialog", (dialog) => dialog.accept());
    const url = new URL(link ?? `${pageOrigin}/index.html?server=${encodeURIComponent(rosterUrl)}`);
    url.searchParams.set("token", token(name));
    await tab.goto(url.toString());
    await tab.waitForSelector("body[data-ready=true]");
    const error = tab.getByTestId("error");
    if (await error.isVisible()) throw new Error(`${name}: ${await error.textContent()}`);
    return tab;
  }
  const shot = (tab, role) => tab.screenshot({ path: join(args.screenshots, `team-page-${role}.png`), fullPage: true });

  // The Owner founds the organization and its workspaces.
  const owner = await open("olivia");
  await owner.getByTestId("create-org-name").fill("Acme Data");
  await owner.getByTestId("create-org-submit").click();
  await owner.getByTestId("org-name").filter({ hasText: "Acme Data" }).waitFor();
  for (const name of ["production", "staging"]) {
    await owner.getByTestId("create-workspace-name").fill(name);
    await owner.getByTestId("create-workspace-submit").click();
    await owner.locator(`th:text-is("${name}")`).waitFor();
  }

  // One batch per role and grant set: an Admin and a Billing user; two seniors with WRITE on
  // production; a junior and an analyst with READ.
  async function invite(emails, role, grants) {
    await owner.getByTestId("invite-open").click();
    await owner.getByTestId("invite-emails").fill(emails.join("\n"));
    await owner.getByTestId("invite-role").selectOption({ label: role });
    for (const [workspace, access] of Object.entries(grants)) {
      await owner.getByTestId(`invite-access-${workspace}`).selectOption({ label: access });
    }
    await owner.getByTestId("invite-submit").click();
    for (const email of emails) {
      await owner.getByTestId(`invitation-${email}`).waitFor();
    }
    check(
      (await owner.getByTestId("invite-ok").count()) === emails.length,
      `${emails.length} ${role} invitations made in one batch`,
    );
  }
  await invite(["adam@example.com"], "Admin", {});
  await invite(["bea@example.com"], "Billing", {});
  await invite(["sam@example.com", "sara@example.com"], "Member", { production: "WRITE" });
  await invite(["jules@example.com", "ana@example.com", "typo@example.com"], "Member", { production: "READ" });
  // The page reports an item's error from its BadRequest details.
  await owner.getByTestId("invite-open").click();
  await owner.getByTestId("invite-emails").fill("not-an-email");
  await owner.getByTestId("invite-submit").click();
  const failed = await owner.getByTestId("invite-failed").textContent();
  check(failed.includes("invitations[0].email"), `a bad email is reported by field: ${failed}`);

  // Resend to the junior; revoke the typo.
  await acceptLink("jules@example.com", 1);
  await owner.getByTestId("invitation-jules@example.com").getByTestId("resend").click();
  await owner.getByTestId("notice").filter({ hasText: "jules@example.com" }).waitFor();
  check(
    (await owner.getByTestId("invitation-jules@example.com").getByTestId("send-count").textContent()) === "2",
    "resend counts a second sending",
  );
  await owner.getByTestId("invitation-typo@example.com").getByTestId("revoke").click();
  await owner.getByTestId("invitation-typo@example.com").waitFor({ state: "detached" });
  check(true, "a revoked invitation leaves the pending list");
  await shot(owner, "owner");

  // Each invitee accepts by the link in their (newest) email.
  const sessions = {};
  for (const [name, count] of [["adam", 1], ["bea", 1], ["sam", 1], ["sara", 1], ["jules", 2], ["ana", 1]]) {
    const link = await acceptLink(`${name}@example.com`, count);
    sessions[name] = await open(name, link);
    const welcome = await sessions[name].getByTestId("notice").textContent();
    check(welcome.includes("you joined"), `${name} joined by the email's link`);
  }

  // What each role sees, once everyone has joined.
  for (const tab of Object.values(sessions)) {
    await tab.goto(`${pageOrigin}/index.html?server=${encodeURIComponent(rosterUrl)}&token=${new URL(tab.url()).searchParams.get("token")}`);
    await tab.waitForSelector("body[data-ready=true]");
  }
  const admin = sessions.adam;
  check(await admin.getByTestId("invite-open").isVisible(), "an Admin sees Invite Member");
  await admin.getByTestId("invite-open").click();
  const adminRoles = await admin.getByTestId("invite-role").locator("option").allTextContents();
  check(!adminRoles.includes("Owner"), `an Admin cannot pick Owner: ${adminRoles}`);
  check(
    (await admin.getByTestId("member-olivia@example.com").getByTestId("remove").count()) === 0,
    "an Admin cannot remove the Owner",
  );
  check(
    (await admin.getByTestId("member-ana@example.com").getByTestId("remove").count()) === 1,
    "an Admin may remove a Member",
  );
  await shot(admin, "admin");

  const billing = sessions.bea;
  check(!(await billing.getByTestId("invite-open").isVisible()), "a Billing user sees no Invite");
  check(!(await billing.getByTestId("invitations").isVisible()), "a Billing user sees no invitations");
  check((await billing.getByTestId("remove").count()) === 0, "a Billing user removes no one");
  await shot(billing, "billing");

  const senior = sessions.sam;
  check(!(await senior.getByTestId("invite-open").isVisible()), "a Member sees no Invite");
  check((await senior.getByTestId("role-select").count()) === 0, "a Member sees roles read-only");
  check(
    (await senior.getByTestId("member-sam@example.com").getByTestId("access-production").textContent()) === "WRITE",
    "a senior engineer holds WRITE on production",
  );
  await shot(senior, "member");

  // The Owner changes a role and removes a member; the page reloads from the server.
  await owner.reload();
  await owner.waitForSelector("body[data-ready=true]");
  await owner.getByTestId("member-sara@example.com").getByTestId("role-select").selectOption({ label: "Admin" });
  await owner.getByTestId("member-ana@example.com").getByTestId("remove").click();
  await owner.getByTestId("member-ana@example.com").waitFor({ state: "detached" });
  // Read back from the server.
  await owner.reload();
  await owner.waitForSelector("body[data-ready=true]");
  const saraRole = await owner.getByTestId("member-sara@example.com").getByTestId("role-select").inputValue();
  check(saraRole === "2", "the Owner made a senior engineer Admin");
  check((await owner.getByTestId("member-ana@example.com").count()) === 0, "the Owner removed the analyst");
  const juniorAccess = await owner.getByTestId("member-jules@example.com").getByTestId("access-production").inputValue();
  check(juniorAccess === "2", "the junior engineer holds READ on production");
  await shot(owner, "owner-after-changes");

  exitCode = 0;
  console.log("team page passed");
} finally {
  await browser.close();
  roster.kill("SIGTERM");
  page.close();
  sink.close();
  process.exitCode = exitCode;
}
