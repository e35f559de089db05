"""Roster behind the real Envoy: jwt_authn verifies the end user's token, ext_authz asks
Roster's Authorization/Check, and a loopback upstream shows what got through.

It plays the "production environment control" scenario of tests/api/scenario.rs over Roster's
gRPC API (the Owner founds the organization and its production workspace; an Admin, a senior
engineer with WRITE, a junior engineer and an analyst with READ join through emailed
invitations), then sends each person's request to each guarded route through Envoy with curl
and compares the status with the permission tables in tests/api/scenario.rs. Exits non-zero at
the first difference.

Envoy runs with deploy/envoy/envoy.yaml's filters and `roster` cluster as written there; only
addresses, the key source (a local JWKS for the identity provider's), the service token and the
routes are this script's.

    python envoy-gateway.py --roster target/debug/roster --envoy PATH/envoy \
        [--database-url URL] [--measure [--rounds 2 --duration 10 --connections 16]]

--measure adds wrk runs through Envoy on the guarded route and on the same route with
ext_authz disabled, alternating, and prints requests per second (use a release build).
Everything listens on 127.0.0.1; every child process ends with this script.
"""

import argparse
import copy
import ctypes
import email
import email.policy
import http
import http.server
import importlib.resources
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

import grpc
import jwt
import yaml
from aiosmtpd.controller import Controller
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
ISSUER = "https://id.example.test/"
AUDIENCE = "roster"
KID = "gateway-test-1"
EXAMPLE = ROOT / "deploy" / "envoy" / "envoy.yaml"
TOKEN_PLACEHOLDER = "ROSTER_SERVICE_TOKEN_HERE"
PEOPLE = ["owner", "admin", "senior", "junior", "analyst"]
USER_IDS = {
    "owner": "olivia-owner",
    "admin": "adam-admin",
    "senior": "sam-senior",
    "junior": "jo-junior",
    "analyst": "ana-analyst",
}
# The role Roster reports for each person, and their access to production.
ROLES = {"owner": "owner", "admin": "admin", "senior": "member", "junior": "member",
         "analyst": "member"}
ACCESS = {"owner": "write", "senior": "write", "junior": "read", "analyst": "read"}


class Failure(Exception):
    """A difference from what the scenario expects, or a part that did not start."""


# ---- child processes that cannot outlive the script

_children: list[subprocess.Popen] = []


# Loaded once here, so that the child between fork and exec only makes the one call.
_LIBC = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: the kernel kills the child if this script dies, even by SIGKILL.
    _LIBC.prctl(1, signal.SIGKILL)


def spawn(args: list[str], log: pathlib.Path, **kwargs) -> subprocess.Popen:
    with open(log, "wb") as out:
        child = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent, **kwargs,
        )
    _children.append(child)
    return child


def stop(child: subprocess.Popen, timeout: float = 15.0) -> int:
    """SIGTERM, then SIGKILL if it has not exited in time; returns the exit code."""
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)
    return child.returncode


def stop_all() -> None:
    for child in reversed(_children):
        stop(child, 5)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(what: str, ready, timeout: float, alive=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and alive.poll() is not None:
            raise Failure(f"{what}: the process exited with {alive.returncode}")
        try:
            if ready():
                return
        except (OSError, grpc.RpcError):
            pass
        time.sleep(0.1)
    raise Failure(f"{what}: not ready after {timeout:.0f} s")


# ---- the identity provider: an ES256 key, its JWKS, and tokens

class IdentityProvider:
    def __init__(self, scratch: pathlib.Path):
        self.key = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid=KID, alg="ES256", use="sig")
        self.jwks = scratch / "jwks.json"
        self.jwks.write_text(json.dumps({"keys": [jwk]}))

    def token(self, user_id: str, lifetime: int = 3600) -> str:
        now = int(time.time())
        claims = {
            "sub": user_id, "email": f"{user_id}@example.com", "email_verified": True,
            "iss": ISSUER, "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + lifetime,
        }
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": KID})


def tampered(token: str) -> str:
    """The token with one character of its signature changed."""
    head, payload, signature = token.split(".")
    middle = len(signature) // 2
    flipped = "B" if signature[middle] != "B" else "C"
    return ".".join([head, payload, signature[:middle] + flipped + signature[middle + 1:]])


# ---- an SMTP sink that keeps every message

class Mailbox:
    def __init__(self):
        self.messages: list[email.message.EmailMessage] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        message = email.message_from_bytes(envelope.original_content or envelope.content,
                                           policy=email.policy.default)
        with self.lock:
            self.messages.append(message)
        return "250 kept"

    def invitation_token(self, recipient: str, timeout: float = 20.0) -> str:
        """The invitation code of the newest email to `recipient`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                theirs = [m for m in self.messages if recipient in str(m.get("To", ""))]
            if theirs:
                text = theirs[-1].get_body(preferencelist=("plain",)).get_content()
                match = re.search(r"invitation code where asked:\s*\n(\S+)", text)
                if match:
                    return match.group(1)
            time.sleep(0.1)
        raise Failure(f"no invitation email reached {recipient}")


# ---- the upstream: answers 200 with the headers it received, and counts requests

class Upstream(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # Room for every connection Envoy opens at once (the default backlog is 5).
    request_queue_size = 128

    def __init__(self):
        super().__init__(("127.0.0.1", 0), UpstreamHandler)
        self.hits = 0
        self.lock = threading.Lock()


class UpstreamHandler(http.server.BaseHTTPRequestHandler):
    # Keep-alive, so that Envoy reuses its connections (and wrk measures Envoy, not connects).
    protocol_version = "HTTP/1.1"
    # The headers and the body go out in two writes: without TCP_NODELAY the second waits for
    # the first's delayed ACK, some 40 ms per request.
    disable_nagle_algorithm = True

    def answer(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        with self.server.lock:
            self.server.hits += 1
        headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        body = json.dumps({"method": self.command, "path": self.path, "headers": headers}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = answer  # noqa: N815 (http.server's names)

    def log_message(self, format, *args):  # noqa: A002
        pass


# ---- Roster: stubs, start, health

def generate_stubs(gen: pathlib.Path) -> None:
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    gen.mkdir()
    protos = sorted(str(p) for p in (ROOT / "proto" / "roster" / "v1").glob("*.proto"))
    code = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"-I{well_known}",
                        f"--python_out={gen}", f"--grpc_python_out={gen}", *protos])
    if code != 0:
        raise Failure("grpc_tools could not generate the Python client from proto/")
    sys.path.insert(0, str(gen))


def service_token(roster: str, scratch: pathlib.Path) -> tuple[str, pathlib.Path]:
    """A token made by `roster service-token`, and the file Roster reads its hash from."""
    out = subprocess.run([roster, "service-token", "envoy-gateway"], capture_output=True,
                         text=True, timeout=30, check=True).stdout.splitlines()
    token = next(line for line in out if line.startswith("rst_"))
    line = next(line for line in out if line.startswith("envoy-gateway "))
    path = scratch / "service-tokens"
    path.write_text(line + "\n")
    return token, path


def serving(target: str) -> bool:
    """grpc.health.v1.Health/Check with an empty request answers SERVING (status 1)."""
    with grpc.insecure_channel(target) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        return check(b"", timeout=1) == b"\x08\x01"


def play_scenario(target: str, idp: IdentityProvider, mailbox: Mailbox) -> tuple[str, str]:
    """The organization and its production workspace, everyone joined; returns their ids."""
    from roster.v1 import resources_pb2 as resources
    from roster.v1 import team_service_pb2 as team
    from roster.v1 import team_service_pb2_grpc as team_grpc

    def as_(person: str):
        return [("authorization", f"Bearer {idp.token(USER_IDS[person])}")]

    with grpc.insecure_channel(target) as channel:
        teams = team_grpc.TeamServiceStub(channel)
        org = teams.CreateOrganization(team.CreateOrganizationRequest(display_name="Acme Data"),
                                       metadata=as_("owner"), timeout=10).organization.id
        production = teams.CreateWorkspace(
            team.CreateWorkspaceRequest(organization_id=org, display_name="production"),
            metadata=as_("owner"), timeout=10).workspace.id

        def join(inviter: str, person: str, role: int, access: int | None) -> None:
            grants = [resources.InvitationWorkspaceGrant(workspace_id=production, access=access)]
            teams.CreateInvitation(
                team.CreateInvitationRequest(organization_id=org,
                                             email=f"{USER_IDS[person]}@example.com", role=role,
                                             workspace_grants=grants if access else []),
                metadata=as_(inviter), timeout=10)
            code = mailbox.invitation_token(f"{USER_IDS[person]}@example.com")
            teams.AcceptInvitation(team.AcceptInvitationRequest(token=code),
                                   metadata=as_(person), timeout=10)

        member = resources.ORGANIZATION_ROLE_MEMBER
        join("owner", "admin", resources.ORGANIZATION_ROLE_ADMIN, None)
        # The Admin brings in the engineers and the analyst, as in the scenario.
        join("admin", "senior", member, resources.WORKSPACE_ACCESS_WRITE)
        join("admin", "junior", member, resources.WORKSPACE_ACCESS_READ)
        join("admin", "analyst", member, resources.WORKSPACE_ACCESS_READ)
    return org, production


def expected_tables() -> dict[str, list[bool]]:
    """The permission tables of tests/api/scenario.rs: permission -> allowed per person."""
    source = (ROOT / "tests" / "api" / "scenario.rs").read_text()
    rows = re.findall(r'\("([a-z_.]+)",\s*\[((?:\s*(?:true|false)\s*,?){5})\]\)', source)
    tables = {name: [v == "true" for v in re.findall(r"true|false", values)]
              for name, values in rows}
    if not tables:
        raise Failure("no permission table found in tests/api/scenario.rs")
    return tables


# ---- Envoy

def route(method: str, path: str, cluster: str | None, extensions: dict | None) -> dict:
    """A route to `cluster`, or answered by Envoy itself when None; `extensions` are its
    ext_authz context extensions, None disables ext_authz on it."""
    per_route = ({"disabled": True} if extensions is None
                 else {"check_settings": {"context_extensions": extensions}})
    per_route["@type"] = ("type.googleapis.com/"
                          "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute")
    entry = {
        "match": {"path": path,
                  "headers": [{"name": ":method", "string_match": {"exact": method}}]},
        "typed_per_filter_config": {"envoy.filters.http.ext_authz": per_route},
    }
    if cluster is None:
        entry["direct_response"] = {"status": 200, "body": {"inline_string": "ok\n"}}
    else:
        entry["route"] = {"cluster": cluster}
    return entry


def envoy_config(example: dict, jwks: pathlib.Path, roster_port: int, upstream_port: int,
                 token: str, org: str, production: str) -> dict:
    """deploy/envoy/envoy.yaml made to run here: its filters and its `roster` cluster as they
    are, with loopback addresses, the local JWKS for the identity provider's, the test's
    service token, the test's routes, and the loopback upstream for the API."""
    config = copy.deepcopy(example)
    loopback = {"address": "127.0.0.1", "port_value": 0}
    config["admin"]["address"]["socket_address"] = dict(loopback)
    (listener,) = config["static_resources"]["listeners"]
    listener["address"]["socket_address"] = dict(loopback)
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    filters = {f["name"]: f["typed_config"] for f in manager["http_filters"]}

    # The identity provider: this script's key, from a file.
    authn = filters["envoy.filters.http.jwt_authn"]
    ((provider_name, provider),) = authn["providers"].items()
    provider.pop("remote_jwks")
    provider.update(local_jwks={"filename": str(jwks)}, issuer=ISSUER, audiences=[AUDIENCE])
    required = {"provider_name": provider_name}
    authn["rules"] = [
        # jwt_authn lets a request without a token through here, so that Roster itself must
        # refuse it for want of a verified payload.
        {"match": {"prefix": "/optional/"},
         "requires": {"requires_any": {"requirements": [required, {"allow_missing": {}}]}}},
        {"match": {"prefix": "/"}, "requires": required},
    ]

    authz = filters["envoy.filters.http.ext_authz"]
    (credential,) = [m for m in authz["grpc_service"]["initial_metadata"]
                     if m["key"] == "authorization"]
    if TOKEN_PLACEHOLDER not in credential["value"]:
        raise Failure(f"the service token's place, {TOKEN_PLACEHOLDER}, is not in the example")
    credential["value"] = credential["value"].replace(TOKEN_PLACEHOLDER, token)

    # The example's route without ext_authz shows what such a route must remove.
    (unguarded,) = [r for r in manager["route_config"]["virtual_hosts"][0]["routes"]
                    if r.get("typed_per_filter_config", {}).get("envoy.filters.http.ext_authz",
                                                                {}).get("disabled")]
    workspace = {"organization_id": org, "workspace_id": production}
    routes = [
        route("GET", "/production/sources", "api", {"permission": "sources.read", **workspace}),
        route("POST", "/production/sources", "api",
              {"permission": "sources.create", **workspace}),
        route("DELETE", "/production/sources", "api",
              {"permission": "sources.delete", **workspace}),
        route("GET", "/billing", "api", {"permission": "billing.read", "organization_id": org}),
        # The scope from the client's x-organization-id / x-workspace-id headers.
        route("GET", "/sources", "api", {"permission": "sources.read"}),
        route("GET", "/optional/production/sources", "api",
              {"permission": "sources.read", **workspace}),
        # The same upstream with jwt_authn only.
        {**route("GET", "/unguarded/production/sources", "api", None),
         "request_headers_to_remove": unguarded["request_headers_to_remove"]},
        # --measure's pair: the guarded route and the same without ext_authz, answered by Envoy
        # itself, so that the loopback upstream (Python) does not cap the figures.
        route("GET", "/measure/production/sources", None,
              {"permission": "sources.read", **workspace}),
        route("GET", "/measure/unguarded/production/sources", None, None),
    ]
    manager["route_config"]["virtual_hosts"] = [{"name": "api", "domains": ["*"], "routes": routes}]

    def on_loopback(cluster: dict, port: int) -> dict:
        cluster["type"] = "STATIC"
        # Plain h2c on loopback: the TLS of a production Roster is not part of this test.
        cluster.pop("transport_socket", None)
        cluster["load_assignment"]["endpoints"] = [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]
        return cluster

    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    config["static_resources"]["clusters"] = [on_loopback(clusters["roster"], roster_port),
                                              on_loopback(clusters["api"], upstream_port)]
    return config


def status_on_error(example: dict) -> int:
    """The status the example's ext_authz answers when Roster cannot (403 unless it says)."""
    manager = (example["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
               ["typed_config"])
    (authz,) = [f["typed_config"] for f in manager["http_filters"]
                if f["name"] == "envoy.filters.http.ext_authz"]
    code = authz.get("status_on_error", {}).get("code", "Forbidden")
    # Envoy's names are HTTPStatus's in CamelCase: ServiceUnavailable, SERVICE_UNAVAILABLE.
    return code if isinstance(code, int) else http.HTTPStatus[
        re.sub(r"(?<!^)(?=[A-Z])", "_", code).upper()].value


class Envoy:
    def __init__(self, binary: str, config: dict, scratch: pathlib.Path, log_level: str):
        path = scratch / "envoy.yaml"
        path.write_text(json.dumps(config, indent=1))
        self.log = scratch / "envoy.log"
        admin_file = scratch / "envoy-admin"
        # --disable-hot-restart: no shared memory, so parallel runs cannot clash on a base id.
        self.process = spawn([binary, "-c", str(path), "--concurrency", "1", "-l", log_level,
                              "--disable-hot-restart", "--admin-address-path", str(admin_file)],
                             self.log)
        wait_until("envoy's admin address", lambda: admin_file.stat().st_size > 0, 30, self.process)
        self.admin = "http://" + admin_file.read_text().strip()
        wait_until("envoy", lambda: self.get("/ready") == "LIVE", 30, self.process)
        listeners = json.loads(self.get("/listeners?format=json"))
        address = listeners["listener_statuses"][0]["local_address"]["socket_address"]
        self.url = f"http://127.0.0.1:{address['port_value']}"

    def counters(self) -> str:
        """Envoy's non-zero counters of ext_authz, jwt_authn and the responses it sent."""
        stats = self.get("/stats?filter=ext_authz|jwt_authn|downstream_rq_[0-9]xx|upstream_rq_"
                         "[0-9]xx|upstream_cx_connect_fail|upstream_rq_timeout")
        return "\n".join(line for line in stats.splitlines() if not line.endswith(": 0"))

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.admin + path, timeout=2) as reply:
            return reply.read().decode().strip()


# ---- requests through Envoy

class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def seen(self) -> dict[str, list[str]]:
        """The headers the upstream received (its body)."""
        return json.loads(self.body)["headers"]


def curl(scratch: pathlib.Path, url: str, method: str = "GET", token: str | None = None,
         headers: dict[str, str] | None = None) -> Reply:
    head, body = scratch / "reply-headers", scratch / "reply-body"
    args = ["curl", "-sS", "--max-time", "5", "-X", method, "-D", str(head), "-o", str(body),
            "-w", "%{http_code}"]
    if token is not None:
        args += ["-H", f"authorization: Bearer {token}"]
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    done = subprocess.run(args + [url], capture_output=True, text=True, timeout=10,
                          preexec_fn=_die_with_parent)
    if done.returncode != 0:
        raise Failure(f"curl {method} {url}: {done.stderr.strip()}")
    received = {}
    for line in head.read_text().splitlines()[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            received[name.strip().lower()] = value.strip()
    return Reply(int(done.stdout), received, body.read_bytes())


class Checks:
    """Runs each request, records the outcome for the summary, and fails on a difference."""

    def __init__(self, scratch: pathlib.Path, envoy: Envoy, upstream: Upstream):
        self.scratch, self.envoy, self.upstream = scratch, envoy, upstream
        self.table: dict[str, dict[str, str]] = {}
        self.other: list[tuple[str, str]] = []

    def request(self, method: str, path: str, **kwargs) -> tuple[Reply, bool]:
        """The reply, and whether the upstream saw the request."""
        before = self.upstream.hits
        reply = curl(self.scratch, self.envoy.url + path, method, **kwargs)
        return reply, self.upstream.hits != before

    def expect(self, condition: bool, what: str, reply: Reply) -> None:
        if not condition:
            raise Failure(f"{what}: got {reply.status}, headers {reply.headers}, "
                          f"body {reply.body[:300]!r}")

    def guarded(self, label: str, method: str, path: str, person: str, token: str,
                allowed: bool, org: str, workspace: str | None, headers: dict | None = None,
                in_table: bool = True):
        # A client's own x-roster-* headers must never reach the upstream as sent.
        forged = {"x-roster-role": "owner", "x-roster-user-id": "olivia-owner",
                  "x-roster-workspace-access": "write", **(headers or {})}
        what = f"{person} {method} {path}"
        reply, hit = self.request(method, path, token=token, headers=forged)
        if allowed:
            self.expect(reply.status == 200 and hit, f"{what} should reach the upstream", reply)
            seen = reply.seen()
            want = {"x-roster-role": [ROLES[person]], "x-roster-user-id": [USER_IDS[person]],
                    "x-organization-id": [org]}
            if workspace is not None:
                want["x-workspace-id"] = [workspace]
                want["x-roster-workspace-access"] = [ACCESS[person]]
            for name, values in want.items():
                self.expect(seen.get(name) == values,
                            f"{what}: the upstream saw {name}={seen.get(name)}, not {values}",
                            reply)
            if workspace is None:
                for name in ("x-workspace-id", "x-roster-workspace-access"):
                    self.expect(name not in seen, f"{what}: {name} reached the upstream", reply)
            self.expect("x-roster-decision-reason" in seen,
                        f"{what}: no x-roster-decision-reason upstream", reply)
        else:
            self.expect(reply.status == 403 and not hit, f"{what} should be 403 from Envoy", reply)
            self.expect(bool(reply.headers.get("x-roster-decision-reason")),
                        f"{what}: the 403 carries no x-roster-decision-reason", reply)
        if in_table:
            self.table.setdefault(label, {})[person] = str(reply.status)
        else:
            self.other.append((f"{person} on {label}", str(reply.status)))

    def refused(self, what: str, method: str, path: str, status: int, **kwargs) -> Reply:
        """A request answered `status` without reaching the upstream."""
        reply, hit = self.request(method, path, **kwargs)
        self.expect(reply.status == status and not hit,
                    f"{what}: expected {status} and the upstream not hit", reply)
        self.other.append((what, str(reply.status)))
        return reply

    def summary(self) -> str:
        width = max(len(label) for label in self.table)
        lines = [f"{'route':<{width}}  " + "  ".join(f"{p:>7}" for p in PEOPLE)]
        for label, cells in self.table.items():
            lines.append(f"{label:<{width}}  "
                         + "  ".join(f"{cells.get(p, '-'):>7}" for p in PEOPLE))
        lines += [f"{what}: {status}" for what, status in self.other]
        return "\n".join(lines)


def check_gateway(checks: Checks, idp: IdentityProvider, org: str, production: str) -> None:
    tables = expected_tables()
    tokens = {person: idp.token(USER_IDS[person]) for person in PEOPLE}
    guarded = [
        ("GET /production/sources", "GET", "/production/sources", "sources.read", production),
        ("POST /production/sources", "POST", "/production/sources", "sources.create", production),
        ("DELETE /production/sources", "DELETE", "/production/sources", "sources.delete",
         production),
        ("GET /billing", "GET", "/billing", "billing.read", None),
    ]
    for label, method, path, permission, workspace in guarded:
        if permission not in tables:
            raise Failure(f"tests/api/scenario.rs has no row for {permission}")
        for person, allowed in zip(PEOPLE, tables[permission]):
            # A stray workspace header must not matter to an organization check.
            extra = {"x-workspace-id": str(uuid.uuid4())} if workspace is None else None
            checks.guarded(f"{label} ({permission})", method, path, person, tokens[person],
                           allowed, org, workspace, extra)
    # The scope from headers, passed to Roster through allowed_headers.
    scope = {"x-organization-id": org, "x-workspace-id": production}
    for person, allowed in zip(PEOPLE, tables["sources.read"]):
        checks.guarded("GET /sources + scope headers (sources.read)", "GET", "/sources", person,
                       tokens[person], allowed, org, production, scope)
    other_workspace = {"x-organization-id": org, "x-workspace-id": str(uuid.uuid4())}
    checks.refused("analyst, another workspace in x-workspace-id", "GET", "/sources", 403,
                   token=tokens["analyst"], headers=other_workspace)
    checks.refused("analyst, no scope headers (malformed check)", "GET", "/sources", 400,
                   token=tokens["analyst"])
    checks.refused("tampered signature", "GET", "/production/sources", 401,
                   token=tampered(tokens["owner"]))
    checks.refused("no token", "GET", "/production/sources", 401)
    reply = checks.refused("no token where jwt_authn lets it pass", "GET",
                           "/optional/production/sources", 401)
    checks.expect(reply.headers.get("x-roster-decision-reason") == "NO_VERIFIED_TOKEN",
                  "Roster, not Envoy, should refuse a request without a verified token", reply)
    checks.guarded("GET /optional/production/sources with a token", "GET",
                   "/optional/production/sources", "analyst", tokens["analyst"], True, org,
                   production, in_table=False)
    checks.refused("expired token", "GET", "/production/sources", 401,
                   token=idp.token(USER_IDS["owner"], lifetime=-120))
    reply, hit = checks.request("GET", "/unguarded/production/sources",
                                token=tokens["admin"], headers={"x-roster-role": "owner"})
    checks.expect(reply.status == 200 and hit, "the route without ext_authz should pass", reply)
    checks.expect("x-roster-role" not in reply.seen(),
                  "a client's x-roster-role reached the upstream past a route without ext_authz",
                  reply)
    checks.other.append(("admin on the route without ext_authz", str(reply.status)))
    for path, person, status in [("/measure/production/sources", "analyst", 200),
                                 ("/measure/production/sources", "admin", 403),
                                 ("/measure/unguarded/production/sources", "admin", 200)]:
        reply, hit = checks.request("GET", path, token=tokens[person])
        checks.expect(reply.status == status and not hit, f"{person} on {path}", reply)
        checks.other.append((f"{person} on {path} (answered by Envoy)", str(reply.status)))


# ---- throughput

def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(args, envoy: Envoy, roster: subprocess.Popen, token: str) -> list[tuple]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise Failure("wrk is not installed (bash .ci/packages.sh installs it)")
    results = []
    paths = {"ext_authz": "/measure/production/sources",
             "no ext_authz": "/measure/unguarded/production/sources"}
    for round_ in range(1, args.rounds + 1):
        for name, path in paths.items():
            envoy_cpu, roster_cpu = cpu_seconds(envoy.process.pid), cpu_seconds(roster.pid)
            done = subprocess.run(
                [wrk, "-t1", f"-c{args.connections}", f"-d{args.duration}s", "--timeout", "2s",
                 "-H", f"authorization: Bearer {token}", envoy.url + path],
                capture_output=True, text=True, timeout=args.duration + 30,
                preexec_fn=_die_with_parent)
            envoy_cpu = cpu_seconds(envoy.process.pid) - envoy_cpu
            roster_cpu = cpu_seconds(roster.pid) - roster_cpu
            rate = re.search(r"Requests/sec:\s*([\d.]+)", done.stdout)
            total = re.search(r"(\d+) requests in", done.stdout)
            if done.returncode != 0 or not rate or not total:
                raise Failure(f"wrk failed:\n{done.stdout}{done.stderr}")
            bad = re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout)
            errors = re.search(r"Socket errors: (.*)", done.stdout)
            if bad or errors:
                raise Failure(f"wrk saw failed requests on {path}:\n{done.stdout}"
                              f"Envoy's counters:\n{envoy.counters()}")
            latency = re.search(r"Latency\s+(\S+)", done.stdout).group(1)
            count = int(total.group(1))
            results.append((round_, name, float(rate.group(1)), latency,
                            1e6 * envoy_cpu / count, 1e6 * roster_cpu / count))
            print(f"round {round_} {name:<12} {float(rate.group(1)):>9,.0f} req/s  "
                  f"mean latency {latency:>8}  CPU per request: envoy "
                  f"{1e6 * envoy_cpu / count:.1f} µs, roster {1e6 * roster_cpu / count:.1f} µs",
                  flush=True)
    return results


# ---- the run

def run(args) -> None:
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="roster-envoy-"))
    try:
        _run(args, scratch)
    except BaseException:
        for log in ("roster.log", "envoy.log"):
            path = scratch / log
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()
                print(f"--- last lines of {log}", file=sys.stderr)
                print("\n".join(lines[-60:]), file=sys.stderr)
        raise
    finally:
        stop_all()
        if args.keep:
            print(f"files kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def _run(args, scratch: pathlib.Path) -> None:
    generate_stubs(scratch / "gen")
    idp = IdentityProvider(scratch)
    mailbox = Mailbox()
    smtp_port = free_port()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=smtp_port, ready_timeout=10)
    smtp.start()
    try:
        token, tokens_file = service_token(args.roster, scratch)
        roster_port = free_port()
        target = f"127.0.0.1:{roster_port}"
        database = args.database_url or f"sqlite://{scratch / 'roster.db'}?mode=rwc"
        roster = spawn([
            args.roster, "--listen", target, "--auth", "jwt",
            "--jwt-jwks-file", str(idp.jwks), "--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE,
            "--service-tokens-file", str(tokens_file),
            "--smtp-url", f"smtp://127.0.0.1:{smtp_port}", "--mail-retry-base-ms", "200",
            "--database-url", database, "--shutdown-grace-secs", "5",
        ], scratch / "roster.log", cwd=scratch, env={**os.environ, "RUST_LOG": "warn"})
        wait_until("roster", lambda: serving(target), 60, roster)
        org, production = play_scenario(target, idp, mailbox)
        print(f"scenario played: organization {org}, production {production}", flush=True)

        upstream = Upstream()
        threading.Thread(target=upstream.serve_forever, daemon=True).start()
        example = yaml.safe_load(args.example.read_text())
        config = envoy_config(example, idp.jwks, roster_port, upstream.server_port, token, org,
                              production)
        envoy = Envoy(args.envoy, config, scratch, args.envoy_log_level)
        checks = Checks(scratch, envoy, upstream)
        check_gateway(checks, idp, org, production)

        if args.measure:
            results = measure(args, envoy, roster, idp.token(USER_IDS["analyst"]))
            for name in ("ext_authz", "no ext_authz"):
                rates = [r[2] for r in results if r[1] == name]
                print(f"{name}: {', '.join(f'{r:,.0f}' for r in rates)} req/s")

        # With Roster gone, ext_authz fails closed: Envoy refuses what it allowed a moment ago.
        code = stop(roster)
        if code != 0:
            raise Failure(f"roster exited with {code} on SIGTERM")
        reply = checks.refused("owner, Roster stopped", "GET", "/production/sources",
                               status_on_error(example), token=idp.token(USER_IDS["owner"]))
        checks.expect("x-roster-decision-reason" not in reply.headers,
                      "with Roster stopped, a decision reason came from somewhere", reply)
        upstream.shutdown()
        print(checks.summary())
    finally:
        smtp.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--roster", required=True, help="the roster binary")
    parser.add_argument("--envoy", required=True, help="the envoy binary")
    parser.add_argument("--database-url", help="default: SQLite in a scratch folder")
    parser.add_argument("--example", type=pathlib.Path, default=EXAMPLE,
                        help="the Envoy configuration whose filters to run (default: %(default)s)")
    parser.add_argument("--measure", action="store_true", help="add wrk runs (not in CI)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--envoy-log-level", default="warning")
    parser.add_argument("--timeout", type=int, default=120, help="seconds for the whole run, "
                        "besides the measurement")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    # Roster runs in the scratch folder: a relative path must not depend on that.
    if os.sep in args.roster:
        args.roster = os.path.abspath(args.roster)

    def out_of_time(signum, frame):
        raise Failure(f"the run took longer than {budget} s")

    budget = args.timeout + (args.rounds * 2 * (args.duration + 5) if args.measure else 0)
    signal.signal(signal.SIGALRM, out_of_time)
    # SIGTERM (CI stopping the script) unwinds like a failure, so children are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    signal.alarm(budget)
    try:
        run(args)
    except Failure as failure:
        print(f"envoy gateway: FAILED: {failure}", file=sys.stderr)
        return 1
    print("envoy gateway: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
