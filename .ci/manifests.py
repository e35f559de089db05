#!/usr/bin/env python3
"""Checks deploy/: renders the kustomize base and overlays with kustomize itself (the one
built into kubectl), validates every Kubernetes object against the OpenAPI schemas
(kubernetes-validate, strict), checks what a production deployment of Roster must have, proves
that an overlay's image change reaches every container, validates compose.yaml against the
Compose specification and lints the Dockerfile with hadolint.
"""

import os
import shutil
import subprocess
import sys
import tempfile

import tomllib

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")
KUBERNETES = os.path.join(DEPLOY, "kubernetes")
KUBERNETES_VERSIONS = ["1.32.0", "1.37.0"]
# Kinds of custom resources the manifests use; the Kubernetes schemas do not describe them.
CUSTOM_KINDS = {("cert-manager.io/v1", "Certificate")}


def load_all(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def render(directory):
    if shutil.which("kubectl") is None:
        raise SystemExit("kubectl (with its built-in kustomize) is needed to render deploy/kubernetes")
    result = subprocess.run(["kubectl", "kustomize", directory], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return [d for d in yaml.safe_load_all(result.stdout) if d is not None]


def pod_containers(obj):
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


def validate(objects, label):
    objects = [o for o in objects if (o["apiVersion"], o["kind"]) not in CUSTOM_KINDS]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump_all(objects, f, sort_keys=False)
        path = f.name
    for version in KUBERNETES_VERSIONS:
        result = subprocess.run(
            ["kubernetes-validate", "--strict", "--quiet", "-k", version, path],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise SystemExit(f"{label} is not valid for Kubernetes {version}:\n{result.stdout}{result.stderr}")
    os.unlink(path)
    print(f"{label}: {len(objects)} objects valid for Kubernetes {', '.join(KUBERNETES_VERSIONS)}")


def one(objects, kind):
    found = [o for o in objects if o["kind"] == kind]
    if len(found) != 1:
        raise SystemExit(f"expected one {kind}, found {len(found)}")
    return found[0]


def check_production_shape(objects, min_replicas, pinned=True):
    problems = []

    def expect(condition, message):
        if not condition:
            problems.append(message)

    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    spec = pod["spec"]
    expect(deployment["spec"]["replicas"] >= min_replicas, f"Deployment has fewer than {min_replicas} replicas")
    expect(spec["securityContext"].get("runAsNonRoot") is True, "pods must run as non-root")
    [roster] = [c for c in spec["containers"] if c["name"] == "roster"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        # Native gRPC probes, or (with TLS, which they cannot speak) the metrics port's HTTP ones.
        http = roster.get(probe, {}).get("httpGet", {})
        expect("grpc" in roster.get(probe, {}) or (http.get("port") == "metrics" and http.get("path") in ("/livez", "/readyz")),
               f"{probe} must be a native gRPC probe or the metrics port's /livez or /readyz")
    for container in pod_containers(deployment):
        resources = container.get("resources", {})
        for part in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                expect(resource in resources.get(part, {}), f"{container['name']}: no {resource} {part}")
        context = container.get("securityContext", {})
        expect(context.get("readOnlyRootFilesystem") is True, f"{container['name']}: root filesystem writable")
        expect(context.get("allowPrivilegeEscalation") is False, f"{container['name']}: may escalate")
        if pinned:
            expect(":" in container["image"] and not container["image"].endswith(":latest"),
                   f"{container['name']}: image must be pinned")
        else:
            expect(container["image"] == "roster", f"{container['name']}: the base names the placeholder image")
    migrations = [c for c in spec.get("initContainers", []) if c.get("args") == ["migrate"]]
    expect(len(migrations) == 1, "an init container must run `roster migrate`")

    configmap = one(objects, "ConfigMap")
    expect(any(s.get("configMapRef", {}).get("name") == configmap["metadata"]["name"]
               for s in roster.get("envFrom", [])), "configuration must come from the ConfigMap")
    secret_keys = {e["valueFrom"]["secretKeyRef"]["key"] for e in roster.get("env", [])
                   if "secretKeyRef" in e.get("valueFrom", {})}
    expect({"database-url", "smtp-url"} <= secret_keys, "database and SMTP URLs must come from the Secret")
    # The Secret "roster" is mounted whole, so the files the ConfigMap names must be in it.
    secret_volumes = {v["name"]: v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
    mounts = {m["mountPath"]: secret_volumes.get(m["name"]) for m in roster.get("volumeMounts", [])}
    expect(mounts.get("/etc/roster/secrets") == "roster", "the Secret roster must be mounted at /etc/roster/secrets")
    expect(not any("items" in v["secret"] for v in spec.get("volumes", []) if "secret" in v),
           "a Secret mounted with items fails pods whose Secret lacks one of them")
    files = {k: v for k, v in configmap["data"].items() if k.endswith("_FILE")}
    read = {os.path.basename(v) for v in files.values() if v.startswith("/etc/roster/secrets/")}
    expect(len(read) == len(files), f"files the ConfigMap names outside the Secret: {files}")
    expect("ROSTER_SERVICE_TOKENS_FILE" in files, "service token hashes must come from the Secret")
    expect(any(k.startswith("ROSTER_JWT_") for k in files), "JWT keys must come from the Secret")
    for key, value in configmap["data"].items():
        expect("PASSWORD" not in key.upper() and "postgres://" not in value, f"ConfigMap holds a secret: {key}")
    [example_secret] = load_all(os.path.join(KUBERNETES, "secret.example.yaml"))
    expect(secret_keys | read <= set(example_secret["stringData"]), "secret.example.yaml lacks keys the pods read")

    def selects(selector):
        return all(pod_labels.get(k) == v for k, v in selector["matchLabels"].items())

    pdb = one(objects, "PodDisruptionBudget")
    expect(selects(pdb["spec"]["selector"]), "the PodDisruptionBudget does not select Roster's pods")
    hpa = one(objects, "HorizontalPodAutoscaler")
    expect(hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"], "the autoscaler targets another Deployment")
    expect(hpa["spec"]["minReplicas"] >= min_replicas, "the autoscaler may scale below the replica floor")
    expect(pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "the disruption budget would block every drain")
    policy = one(objects, "NetworkPolicy")
    expect(selects(policy["spec"]["podSelector"]), "the NetworkPolicy does not select Roster's pods")
    expect(set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}, "the NetworkPolicy must limit both directions")
    service = one(objects, "Service")
    expect(all(pod_labels.get(k) == v for k, v in service["spec"]["selector"].items()), "the Service selects no Roster pod")
    if problems:
        raise SystemExit("deployment problems:\n  " + "\n  ".join(problems))


def check_tls(objects):
    """The TLS component: a certificate in a Secret the pods mount, the server told to use it,
    and probes that do not need gRPC over plaintext."""
    [certificate] = [o for o in objects if o["kind"] == "Certificate"]
    deployment = one(objects, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    [roster] = [c for c in spec["containers"] if c["name"] == "roster"]
    volumes = {v["name"]: v.get("secret", {}).get("secretName") for v in spec["volumes"]}
    mounted = {m["mountPath"] for m in roster["volumeMounts"] if volumes.get(m["name"]) == certificate["spec"]["secretName"]}
    data = one(objects, "ConfigMap")["data"]
    problems = []
    if mounted != {"/etc/roster/tls"}:
        problems.append(f"the certificate's Secret is mounted at {mounted}")
    for key, file in (("ROSTER_TLS_CERT", "tls.crt"), ("ROSTER_TLS_KEY", "tls.key")):
        if data.get(key) != f"/etc/roster/tls/{file}":
            problems.append(f"{key} is {data.get(key)!r}")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if "httpGet" not in roster[probe] or roster[probe]["httpGet"]["port"] != "metrics":
            problems.append(f"{probe} must use the metrics port's HTTP endpoints")
    names = certificate["spec"]["dnsNames"]
    service = one(objects, "Service")["metadata"]
    if f"{service['name']}.{service['namespace']}.svc" not in names:
        problems.append(f"the certificate does not name the Service: {names}")
    if problems:
        raise SystemExit("TLS overlay problems:\n  " + "\n  ".join(problems))


def check_image_change():
    """The image is set in one place, the overlay: changing it there reaches every container
    (the base's placeholder cannot shadow it)."""
    with tempfile.TemporaryDirectory() as scratch:
        copy = os.path.join(scratch, "kubernetes")
        shutil.copytree(KUBERNETES, copy)
        path = os.path.join(copy, "overlays", "production", "kustomization.yaml")
        with open(path, encoding="utf-8") as f:
            kustomization = yaml.safe_load(f)
        kustomization["images"] = [{"name": "roster", "newName": "registry.example.com/team/roster", "newTag": "9.9.9"}]
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(kustomization, f)
        for overlay in ("production", "production-tls"):
            images = {c["image"] for c in pod_containers(one(render(os.path.join(copy, "overlays", overlay)), "Deployment"))}
            if images != {"registry.example.com/team/roster:9.9.9"}:
                raise SystemExit(f"{overlay}: an image set in the overlay did not reach every container: {images}")
    print("kubernetes: an image set in the production overlay reaches every container of both overlays")


def main():
    base = render(os.path.join(KUBERNETES, "base"))
    validate(base, "kubernetes/base")
    check_production_shape(base, 2, pinned=False)
    for overlay in ("production", "production-tls"):
        rendered = render(os.path.join(KUBERNETES, "overlays", overlay))
        validate(rendered, f"kubernetes/overlays/{overlay}")
        check_production_shape(rendered, 3)
        namespaces = {o["metadata"].get("namespace") for o in rendered if o["kind"] != "Namespace"}
        if namespaces != {"roster"}:
            raise SystemExit(f"{overlay} objects outside the roster namespace: {namespaces}")
    check_tls(render(os.path.join(KUBERNETES, "overlays", "production-tls")))
    check_image_change()
    validate(load_all(os.path.join(KUBERNETES, "secret.example.yaml")), "kubernetes/secret.example.yaml")
    print("kubernetes: base and overlays have what a production deployment needs")

    subprocess.run(
        ["check-jsonschema", "--builtin-schema", "vendor.compose-spec", os.path.join(DEPLOY, "compose.yaml")],
        check=True,
    )
    subprocess.run(["hadolint", os.path.join(DEPLOY, "Dockerfile")], check=True)
    check_dependency_layer()
    print("Dockerfile: hadolint clean; its dependency layer has a placeholder for every target")


def check_dependency_layer():
    """The Dockerfile builds dependencies against placeholder sources; a target of Cargo.toml
    without a placeholder would fail that step."""
    with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
        manifest = tomllib.load(f)
    paths = [manifest["lib"]["path"]] + [b["path"] for b in manifest.get("bin", [])]
    with open(os.path.join(DEPLOY, "Dockerfile"), encoding="utf-8") as f:
        dockerfile = f.read()
    layer = dockerfile[: dockerfile.index("COPY src ./src")]
    missing = [p for p in paths if p not in layer]
    if missing:
        raise SystemExit(f"deploy/Dockerfile: no placeholder for {missing} before COPY src")


if __name__ == "__main__":
    sys.exit(main())
