#!/usr/bin/env python3
"""Checks deploy/: renders the kustomize base and production overlay, validates every object
against the Kubernetes OpenAPI schemas (kubernetes-validate, strict), checks what a production
deployment of Roster must have, validates compose.yaml against the Compose specification and
lints the Dockerfile with hadolint.

kustomize itself cannot be installed from the registries CI reaches, so this renders the part
of kustomize the manifests use (resources, namespace, labels, images, RFC 6902 patches with a
target) and refuses any other kustomization field rather than ignore it.
"""

import os
import subprocess
import sys
import tempfile

import tomllib

import jsonpatch
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")
KUBERNETES_VERSIONS = ["1.32.0", "1.37.0"]
SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}


def load_all(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def render(directory):
    with open(os.path.join(directory, "kustomization.yaml"), encoding="utf-8") as f:
        kustomization = yaml.safe_load(f)
    unknown = set(kustomization) - SUPPORTED
    if unknown:
        raise SystemExit(f"{directory}: kustomization fields this check cannot render: {unknown}")
    objects = []
    for resource in kustomization.get("resources", []):
        path = os.path.normpath(os.path.join(directory, resource))
        objects += render(path) if os.path.isdir(path) else load_all(path)
    for entry in kustomization.get("labels", []):
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])
    if "namespace" in kustomization:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = kustomization["namespace"]
    for image in kustomization.get("images", []):
        for obj in objects:
            for container in pod_containers(obj):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag or 'latest')}"
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        matches = [
            o for o in objects
            if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]
        ]
        if len(matches) != 1:
            raise SystemExit(f"{directory}: patch {patch['path']} matches {len(matches)} objects")
        operations = load_all(os.path.join(directory, patch["path"]))[0]
        patched = jsonpatch.apply_patch(matches[0], operations)
        objects[objects.index(matches[0])] = patched
    return objects


def pod_containers(obj):
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


def validate(objects, label):
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


def check_production_shape(objects, min_replicas):
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
        expect("grpc" in roster.get(probe, {}), f"{probe} must be a native gRPC probe")
    for container in pod_containers(deployment):
        resources = container.get("resources", {})
        for part in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                expect(resource in resources.get(part, {}), f"{container['name']}: no {resource} {part}")
        context = container.get("securityContext", {})
        expect(context.get("readOnlyRootFilesystem") is True, f"{container['name']}: root filesystem writable")
        expect(context.get("allowPrivilegeEscalation") is False, f"{container['name']}: may escalate")
        expect(":" in container["image"] and not container["image"].endswith(":latest"),
               f"{container['name']}: image must be pinned")
    migrations = [c for c in spec.get("initContainers", []) if c.get("args") == ["migrate"]]
    expect(len(migrations) == 1, "an init container must run `roster migrate`")

    configmap = one(objects, "ConfigMap")
    expect(any(s.get("configMapRef", {}).get("name") == configmap["metadata"]["name"]
               for s in roster.get("envFrom", [])), "configuration must come from the ConfigMap")
    secret_keys = {e["valueFrom"]["secretKeyRef"]["key"] for e in roster.get("env", [])
                   if "secretKeyRef" in e.get("valueFrom", {})}
    expect({"database-url", "smtp-url"} <= secret_keys, "database and SMTP URLs must come from the Secret")
    secret_volumes = [v for v in spec.get("volumes", []) if "secret" in v]
    mounted = {i["key"] for v in secret_volumes for i in v["secret"].get("items", [])}
    expect({"jwks.json", "service-tokens"} <= mounted, "JWT keys and service token hashes must come from the Secret")
    for key, value in configmap["data"].items():
        expect("PASSWORD" not in key.upper() and "postgres://" not in value, f"ConfigMap holds a secret: {key}")
    [example_secret] = load_all(os.path.join(DEPLOY, "kubernetes", "secret.example.yaml"))
    used = secret_keys | mounted
    expect(used <= set(example_secret["stringData"]), "secret.example.yaml lacks keys the pods read")

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


def main():
    base = render(os.path.join(DEPLOY, "kubernetes", "base"))
    validate(base, "kubernetes/base")
    check_production_shape(base, 2)
    production = render(os.path.join(DEPLOY, "kubernetes", "overlays", "production"))
    validate(production, "kubernetes/overlays/production")
    check_production_shape(production, 3)
    namespaces = {o["metadata"].get("namespace") for o in production if o["kind"] != "Namespace"}
    if namespaces != {"roster"}:
        raise SystemExit(f"production objects outside the roster namespace: {namespaces}")
    validate(load_all(os.path.join(DEPLOY, "kubernetes", "secret.example.yaml")), "kubernetes/secret.example.yaml")
    print("kubernetes: base and production overlay have what a production deployment needs")

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
