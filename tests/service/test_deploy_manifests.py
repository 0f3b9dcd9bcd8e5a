"""deploy/: the KubeRay manifests, the MLflow manifests, the AWS cluster-launcher config and the Dockerfile.

Nothing here starts a cluster; every check is against a real schema or parser where one exists:

* RayCluster / RayJob: the KubeRay CRDs' v1 ``openAPIV3Schema`` (``/work/shared/schemas/kuberay``, or
  ``$KUBERAY_CRD_DIR``) with ``jsonschema``, plus a strictness walk, because the CRDs do not set
  ``additionalProperties: false`` and the API server would silently prune unknown keys.
* Deployment / StatefulSet / Service / Secret: small hand-written apps/v1 and core/v1 schemas whose
  pod template and PVC spec are taken from the same CRD (KubeRay embeds core/v1 PodTemplateSpec),
  plus the cross-object rules the API server enforces (selector vs labels, named ports).
* Credentials: every sensitive env var comes from a ``secretKeyRef`` naming a Secret/key of
  ``secrets.example.yaml``; no inline secrets anywhere; the example holds placeholders only.
* The RayJob entrypoint is parsed by hyperctl's own argparse parser and its job file (with the
  ``--set`` overrides) by the service's job-spec loader; the MLflow server's arguments by MLflow's click
  command; ``deploy/aws/cluster.yaml`` by Ray's shipped ``ray-schema.json`` and by the same
  ``prepare_config`` + ``validate_config`` that ``ray up`` runs before it talks to AWS.
* Each check is also shown to fail: mutated copies (typo'd keys, wrong types, inline secrets, ...)
  are rejected.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any
from unittest import mock

import jsonschema
import pytest
import yaml

from service.cli import build_parser
from service.spec.errors import JobSpecError
from service.spec.loading import load_job

from helpers import ROOT

DEPLOY = ROOT / "deploy"
KUBERAY = DEPLOY / "kuberay"
AWS_CONFIG = DEPLOY / "aws" / "cluster.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCS = ROOT / "docs" / "deploy.md"
CRD_DIR = Path(os.environ.get("KUBERAY_CRD_DIR", ROOT.parent / "shared" / "schemas" / "kuberay"))
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
MANIFESTS = ("raycluster.yaml", "rayjob.yaml", "mlflow.yaml", "secrets.example.yaml")
PLACEHOLDER_REGISTRY = "REGISTRY.example.com/"
PLACEHOLDER = "REPLACE_ME"
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Env vars that carry credentials: they must come from a Secret (valueFrom.secretKeyRef), never `value`.
SENSITIVE_ENV = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|KEY_ID|CREDENTIAL|BACKEND_STORE_URI|DATABASE_URL")
# Values that look like credentials wherever they appear (env values, args, commands).
SECRET_LOOKING = [
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), "an AWS access key id"),
    (re.compile(r"://[^/\s:@]+:[^/\s@]+@"), "a URI with a password"),
    (re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])"), "a 40-character AWS-secret-like string"),
    (re.compile(r"(?<!\S)--?(password|secret|token)[= ]\S+", re.I), "a password/secret/token option"),
]


# ---- loading ------------------------------------------------------------------------------------


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.load_all(path.read_text(encoding="utf-8"), Loader=LOADER) if d is not None]


@functools.cache
def manifests() -> dict[str, list[dict[str, Any]]]:
    return {name: load_docs(KUBERAY / name) for name in MANIFESTS}


def all_docs(include_example: bool = True) -> list[tuple[str, dict[str, Any]]]:
    return [
        (name, d)
        for name, docs in manifests().items()
        for d in docs
        if include_example or name != "secrets.example.yaml"
    ]


def docs_of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in all_docs() if d.get("kind") == kind]


@functools.cache
def crd_schema(kind: str) -> dict[str, Any]:
    """The v1 openAPIV3Schema of the CRD, turned into plain JSON Schema (see :func:`openapi_to_jsonschema`),
    with the top-level ``metadata`` (``type: object`` in every CRD) replaced by ObjectMeta."""
    path = CRD_DIR / CRD_FILES[kind]
    if not path.is_file():
        pytest.fail(f"KubeRay CRD not found: {path} (set KUBERAY_CRD_DIR)")
    crd = yaml.load(path.read_text(encoding="utf-8"), Loader=LOADER)
    assert crd["spec"]["names"]["kind"] == kind
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = openapi_to_jsonschema(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    schema["properties"]["metadata"] = OBJECT_META
    schema["properties"]["apiVersion"] = {"type": "string", "enum": ["ray.io/v1"]}
    schema["properties"]["kind"] = {"type": "string", "enum": [kind]}
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
    return schema


def openapi_to_jsonschema(node: Any) -> Any:
    """OpenAPI v3 (Kubernetes structural schema) specifics -> JSON Schema draft 4:

    * ``nullable: true`` -> the type also admits null;
    * ``x-kubernetes-int-or-string: true`` / ``format: int-or-string`` -> integer or string;
    * other ``x-kubernetes-*`` keys are left in place: jsonschema ignores unknown keywords, and the
      strictness walk and list checks below read them."""
    if isinstance(node, list):
        return [openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties", "definitions"):  # name -> schema maps
            out[key] = {name: openapi_to_jsonschema(sub) for name, sub in value.items()}
        elif key in ("enum", "default", "example", "required", "x-kubernetes-validations"):
            out[key] = value
        else:
            out[key] = openapi_to_jsonschema(value)
    if out.get("x-kubernetes-int-or-string") or out.get("format") == "int-or-string":
        out.pop("type", None)
        out.pop("format", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
    return out


def _int_range(bits: int):
    def check(value: Any) -> bool:
        return not isinstance(value, int) or -(2 ** (bits - 1)) <= value < 2 ** (bits - 1)

    return check


FORMATS = jsonschema.FormatChecker()
FORMATS.checks("int32")(_int_range(32))
FORMATS.checks("int64")(_int_range(64))

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": DNS1123_SUBDOMAIN, "maxLength": 253},
        "namespace": {"type": "string", "pattern": DNS1123_LABEL, "maxLength": 63},
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
        "finalizers": {"type": "array", "items": {"type": "string"}},
    },
}


# ---- schema validation + strictness -------------------------------------------------------------


def schema_problems(doc: Any, schema: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft4Validator(schema, format_checker=FORMATS)
    problems = [
        f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message[:300]}" for e in validator.iter_errors(doc)
    ]
    return problems + strict_problems(doc, schema)


def strict_problems(node: Any, schema: dict[str, Any], path: tuple = ()) -> list[str]:
    """Keys the schema does not know (the API server would prune them silently), duplicate keys of
    ``x-kubernetes-list-type: map|set`` lists, and fields guarded by CEL rules (x-kubernetes-validations)
    that this test cannot evaluate. Keys are free only where the schema says so (additionalProperties
    or x-kubernetes-preserve-unknown-fields)."""
    where = ".".join(map(str, path)) or "(top)"
    if not isinstance(schema, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    problems = []
    if schema.get("x-kubernetes-validations"):
        problems.append(
            f"{where}: guarded by CEL rules this test cannot evaluate "
            f"({[v['rule'] for v in schema['x-kubernetes-validations']]})"
        )
    if isinstance(node, dict):
        props = dict(schema.get("properties", {}))
        for alt in schema.get("anyOf", []) + schema.get("allOf", []) + schema.get("oneOf", []):
            props.update(alt.get("properties", {}))
        extra = schema.get("additionalProperties")
        for key, value in node.items():
            if key in props:
                problems += strict_problems(value, props[key], path + (key,))
            elif isinstance(extra, dict):
                problems += strict_problems(value, extra, path + (key,))
            elif extra is not True:
                hint = f" (known here: {', '.join(sorted(props))})" if props else " (no keys allowed here)"
                problems.append(f"{'.'.join(map(str, path + (key,)))}: unknown field{hint[:400]}")
    elif isinstance(node, list) and isinstance(schema.get("items"), dict):
        list_type = schema.get("x-kubernetes-list-type")
        if list_type == "set" and len({json.dumps(v, sort_keys=True) for v in node}) != len(node):
            problems.append(f"{where}: duplicate items in a list-type set")
        if list_type == "map":
            keys = [
                tuple(item.get(k) for k in schema.get("x-kubernetes-list-map-keys", []))
                for item in node
                if isinstance(item, dict)
            ]
            if len(set(keys)) != len(keys):
                problems.append(f"{where}: duplicate {schema.get('x-kubernetes-list-map-keys')} in a list-type map")
        for i, item in enumerate(node):
            problems += strict_problems(item, schema["items"], path + (i,))
    return problems


def crd_problems(doc: dict[str, Any]) -> list[str]:
    if doc.get("kind") not in CRD_FILES:
        return [f"kind {doc.get('kind')!r} is not a KubeRay CRD"]
    return schema_problems(doc, crd_schema(doc["kind"]))


# ---- core/v1 and apps/v1 objects ----------------------------------------------------------------


def _cluster_spec_props() -> dict[str, Any]:
    return crd_schema("RayCluster")["properties"]["spec"]["properties"]


def pod_template_schema() -> dict[str, Any]:
    """core/v1 PodTemplateSpec as embedded in the RayCluster CRD (head group template)."""
    return _cluster_spec_props()["headGroupSpec"]["properties"]["template"]


def pvc_template_schema() -> dict[str, Any]:
    """core/v1 PersistentVolumeClaimTemplate as embedded in the CRD (pod volume ``ephemeral``)."""
    volume = pod_template_schema()["properties"]["spec"]["properties"]["volumes"]["items"]
    return volume["properties"]["ephemeral"]["properties"]["volumeClaimTemplate"]


def _top(api_version: str, kind: str, spec: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    props = {
        "apiVersion": {"type": "string", "enum": [api_version]},
        "kind": {"type": "string", "enum": [kind]},
        "metadata": OBJECT_META,
        **extra,
    }
    if spec is not None:
        props["spec"] = spec
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", *(["spec"] if spec else [])],
        "properties": props,
    }


def label_selector() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "matchLabels": STRING_MAP,
            "matchExpressions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {"type": "string"},
                        "operator": {"type": "string"},
                        "values": {"type": "array"},
                    },
                },
            },
        },
    }


def core_schema(kind: str) -> dict[str, Any]:
    """Hand-written apps/v1 / core/v1 schemas (a subset of the fields: others count as unknown)."""
    int_or_string = {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    workload = {
        "replicas": {"type": "integer", "minimum": 0},
        "selector": label_selector(),
        "template": pod_template_schema(),
        "minReadySeconds": {"type": "integer"},
        "revisionHistoryLimit": {"type": "integer"},
    }
    if kind == "Deployment":
        return _top(
            "apps/v1",
            kind,
            {
                "type": "object",
                "required": ["selector", "template"],
                "properties": {
                    **workload,
                    "progressDeadlineSeconds": {"type": "integer"},
                    "paused": {"type": "boolean"},
                    "strategy": {
                        "type": "object",
                        "properties": {
                            "type": {"type": "string", "enum": ["Recreate", "RollingUpdate"]},
                            "rollingUpdate": {
                                "type": "object",
                                "properties": {"maxSurge": int_or_string, "maxUnavailable": int_or_string},
                            },
                        },
                    },
                },
            },
        )
    if kind == "StatefulSet":
        pvc = copy.deepcopy(pvc_template_schema())
        pvc["properties"]["metadata"] = {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": DNS1123_LABEL},
                "labels": STRING_MAP,
                "annotations": STRING_MAP,
            },
        }
        return _top(
            "apps/v1",
            kind,
            {
                "type": "object",
                "required": ["selector", "template", "serviceName"],
                "properties": {
                    **workload,
                    "serviceName": {"type": "string"},
                    "podManagementPolicy": {"type": "string", "enum": ["OrderedReady", "Parallel"]},
                    "updateStrategy": {
                        "type": "object",
                        "properties": {"type": {"type": "string"}, "rollingUpdate": {"type": "object"}},
                    },
                    "volumeClaimTemplates": {"type": "array", "items": pvc},
                },
            },
        )
    if kind == "Service":
        port = {
            "type": "object",
            "required": ["port"],
            "properties": {
                "name": {"type": "string", "pattern": DNS1123_LABEL},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "targetPort": int_or_string,
                "protocol": {"type": "string", "enum": ["TCP", "UDP", "SCTP"]},
                "appProtocol": {"type": "string"},
                "nodePort": {"type": "integer"},
            },
        }
        return _top(
            "v1",
            kind,
            {
                "type": "object",
                "required": ["ports"],
                "properties": {
                    "type": {"type": "string", "enum": ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]},
                    "selector": STRING_MAP,
                    "ports": {"type": "array", "minItems": 1, "items": port},
                    "clusterIP": {"type": "string"},
                    "sessionAffinity": {"type": "string"},
                    "publishNotReadyAddresses": {"type": "boolean"},
                },
            },
        )
    if kind == "Secret":
        return _top(
            "v1",
            kind,
            None,
            type={"type": "string"},
            immutable={"type": "boolean"},
            data={"type": "object", "additionalProperties": {"type": "string", "pattern": r"^[A-Za-z0-9+/]*={0,2}$"}},
            stringData=STRING_MAP,
        )
    raise AssertionError(f"no schema for kind {kind!r}")


def workload_rules(doc: dict[str, Any]) -> list[str]:
    """What the API server checks beyond the schema for Deployments/StatefulSets."""
    name = doc["metadata"]["name"]
    selector = doc["spec"]["selector"].get("matchLabels", {})
    labels = doc["spec"]["template"].get("metadata", {}).get("labels", {})
    problems = (
        []
        if selector and selector.items() <= labels.items()
        else [f"{doc['kind']} {name}: spec.selector.matchLabels {selector} must match the template's labels {labels}"]
    )
    containers = doc["spec"]["template"]["spec"]["containers"]
    volumes = {v["name"] for v in doc["spec"]["template"]["spec"].get("volumes", [])}
    volumes |= {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
    for c in containers:
        problems += [
            f"{name}/{c['name']}: volumeMount {m['name']!r} names no volume"
            for m in c.get("volumeMounts", [])
            if m["name"] not in volumes
        ]
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            port = (c.get(probe, {}).get("httpGet") or {}).get("port")
            if isinstance(port, str) and port not in {p.get("name") for p in c.get("ports", [])}:
                problems.append(f"{name}/{c['name']}: {probe} port {port!r} is no named container port")
    return problems


def service_rules(service: dict[str, Any], workloads: list[dict[str, Any]]) -> list[str]:
    """A Service must select some pod template, and its named targetPorts must exist there."""
    name, selector = service["metadata"]["name"], service["spec"].get("selector", {})
    pods = [
        w["spec"]["template"]
        for w in workloads
        if selector and selector.items() <= w["spec"]["template"].get("metadata", {}).get("labels", {}).items()
    ]
    if not pods:
        return [f"Service {name}: selector {selector} matches no pod template"]
    names = {p.get("name") for pod in pods for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    numbers = {p.get("containerPort") for pod in pods for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    return [
        f"Service {name}: targetPort {p['targetPort']!r} is no container port of the selected pods"
        for p in service["spec"]["ports"]
        if p.get("targetPort", p["port"]) not in names | numbers
    ]


def core_problems(doc: dict[str, Any], same_file: list[dict[str, Any]]) -> list[str]:
    problems = schema_problems(doc, core_schema(doc["kind"]))
    if problems:
        return problems
    if doc["kind"] in ("Deployment", "StatefulSet"):
        problems += workload_rules(doc)
    if doc["kind"] == "StatefulSet" and not any(
        d["kind"] == "Service" and d["metadata"]["name"] == doc["spec"]["serviceName"] for d in same_file
    ):
        problems.append(
            f"StatefulSet {doc['metadata']['name']}: serviceName {doc['spec']['serviceName']!r} "
            "is no Service of the same file"
        )
    if doc["kind"] == "Service":
        problems += service_rules(doc, [d for d in same_file if d["kind"] in ("Deployment", "StatefulSet")])
    return problems


# ---- containers, credentials --------------------------------------------------------------------


def containers(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, container) for every container of a manifest, Ray pods included."""
    found: list[tuple[str, dict[str, Any]]] = []

    def pod(where: str, template: dict[str, Any]) -> None:
        spec = template.get("spec", {})
        for key in ("initContainers", "containers"):
            found.extend((f"{where}/{c.get('name')}", c) for c in spec.get(key, []))

    spec = doc.get("spec", {})
    cluster = spec.get("rayClusterSpec", spec) if doc.get("kind") in CRD_FILES else None
    if cluster is not None:
        if "headGroupSpec" in cluster:
            pod("head", cluster["headGroupSpec"].get("template", {}))
        for group in cluster.get("workerGroupSpecs", []):
            pod(f"worker[{group.get('groupName')}]", group.get("template", {}))
        if "submitterPodTemplate" in spec:
            pod("submitter", spec["submitterPodTemplate"])
    elif "template" in spec:
        pod(doc["metadata"]["name"], spec["template"])
    return found


def ray_containers(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(w, c) for w, c in containers(doc) if w.startswith(("head", "worker"))]


def example_secrets() -> dict[str, dict[str, str]]:
    return {
        d["metadata"]["name"]: {**d.get("stringData", {}), **d.get("data", {})}
        for d in manifests()["secrets.example.yaml"]
    }


def secret_text_problems(text: str, where: str) -> list[str]:
    return [f"{where}: looks like {what}" for pattern, what in SECRET_LOOKING if pattern.search(text)]


def credential_problems(doc: dict[str, Any]) -> list[str]:
    """Sensitive env only from secretKeyRef to a Secret/key of secrets.example.yaml; nothing that looks
    like a credential in env values, commands or args; Secrets only in secrets.example.yaml."""
    name = f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}"
    if doc.get("kind") == "Secret":
        return [f"{name}: Secrets belong in secrets.example.yaml (placeholders) or kubectl, not in manifests"]
    secrets, problems = example_secrets(), []
    for where, c in containers(doc):
        for env in c.get("env", []):
            var, ref = env.get("name", ""), (env.get("valueFrom") or {}).get("secretKeyRef")
            if "value" in env:
                if SENSITIVE_ENV.search(var):
                    problems.append(f"{name} {where}: env {var} is set inline; use valueFrom.secretKeyRef")
                problems += secret_text_problems(str(env["value"]), f"{name} {where}: env {var}")
            if ref is not None and not (ref.get("key") in secrets.get(ref.get("name"), {}) or ref.get("optional")):
                problems.append(
                    f"{name} {where}: env {var} refers to Secret {ref.get('name')!r} key "
                    f"{ref.get('key')!r}, which secrets.example.yaml does not define"
                )
            if SENSITIVE_ENV.search(var) and ref is None:
                problems.append(f"{name} {where}: env {var} must come from valueFrom.secretKeyRef")
        for src in c.get("envFrom", []):
            if "secretRef" in src and src["secretRef"].get("name") not in secrets:
                problems.append(
                    f"{name} {where}: envFrom Secret {src['secretRef'].get('name')!r} is not in the example"
                )
        for part in ("command", "args"):
            problems += secret_text_problems(" ".join(map(str, c.get(part, []))), f"{name} {where}: {part}")
    if doc.get("kind") == "RayJob":
        problems += secret_text_problems(doc["spec"].get("entrypoint", ""), f"{name}: entrypoint")
    return problems


def image_problems(doc: dict[str, Any]) -> list[str]:
    problems = []
    for where, c in containers(doc):
        image = c.get("image", "")
        repo, _, tag = image.rpartition(":")
        if not image or "/" in tag or not repo or tag in ("", "latest"):
            problems.append(f"{doc['kind']} {where}: image {image!r} needs an explicit, non-latest tag")
    for where, c in ray_containers(doc):
        if not c.get("image", "").startswith(PLACEHOLDER_REGISTRY):
            problems.append(
                f"{doc['kind']} {where}: Ray image {c.get('image')!r} is not our image "
                f"({PLACEHOLDER_REGISTRY}..., the clearly marked placeholder registry)"
            )
    return problems


def lock_version(package: str) -> str:
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.lower().startswith(package.lower() + "=="):
            return line.split("==", 1)[1].split("+")[0].strip()
    raise AssertionError(f"{package} not pinned in requirements.lock")


# ---- Ray clusters -------------------------------------------------------------------------------


def cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    out = [(f"RayCluster {d['metadata']['name']}", d["spec"]) for d in docs_of_kind("RayCluster")]
    out += [
        (f"RayJob {d['metadata']['name']}", d["spec"]["rayClusterSpec"])
        for d in docs_of_kind("RayJob")
        if "rayClusterSpec" in d["spec"]
    ]
    return out


def cluster_rules(name: str, spec: dict[str, Any]) -> list[str]:
    """What KubeRay needs beyond the CRD, and what this project needs from a cluster."""
    import ray

    problems = []
    if spec.get("rayVersion") != ray.__version__:
        problems.append(f"{name}: rayVersion {spec.get('rayVersion')!r} != installed Ray {ray.__version__}")
    if spec.get("enableInTreeAutoscaling") is not True:
        problems.append(f"{name}: enableInTreeAutoscaling must be true")
    if (spec.get("authOptions") or {}).get("mode") != "token":
        problems.append(f"{name}: authOptions.mode must be token (Ray 2.60 clusters are open without it)")
    gpu_groups = []
    for group in spec.get("workerGroupSpecs", []):
        lo, hi, n = group.get("minReplicas", 0), group.get("maxReplicas", 0), group.get("replicas", 0)
        if not lo <= n <= hi:
            problems.append(
                f"{name} group {group['groupName']}: expected minReplicas <= replicas <= maxReplicas, "
                f"found {lo}, {n}, {hi}"
            )
        for c in group["template"]["spec"]["containers"]:
            limits = c.get("resources", {}).get("limits", {})
            if "nvidia.com/gpu" in limits:
                gpu_groups.append(group["groupName"])
                if str(limits["nvidia.com/gpu"]) != str(
                    c["resources"].get("requests", {}).get("nvidia.com/gpu", limits["nvidia.com/gpu"])
                ):
                    problems.append(f"{name} group {group['groupName']}: GPU requests must equal limits")
    if not gpu_groups:
        problems.append(f"{name}: no worker group with nvidia.com/gpu limits")
    if not any("nvidia.com/gpu" not in str(g["template"]) for g in spec.get("workerGroupSpecs", [])):
        problems.append(f"{name}: no CPU worker group")
    envs = [
        json.dumps(c.get("env", []), sort_keys=True) for _, c in ray_containers({"kind": "RayCluster", "spec": spec})
    ]
    if len(set(envs)) != 1:
        problems.append(f"{name}: every Ray container needs the same env (S3 and tracking settings)")
    images = {c.get("image") for _, c in ray_containers({"kind": "RayCluster", "spec": spec})}
    if len(images) != 1:
        problems.append(f"{name}: Ray containers use different images {sorted(images)}")
    return problems


def env_value(spec: dict[str, Any], var: str) -> str | None:
    (_, head), *_ = ray_containers({"kind": "RayCluster", "spec": spec})
    return next((e.get("value") for e in head.get("env", []) if e["name"] == var), None)


def mlflow_service_urls() -> set[str]:
    return {
        f"http://{d['metadata']['name']}:{p['port']}"
        for d in manifests()["mlflow.yaml"]
        if d["kind"] == "Service" and d["metadata"]["name"] == "mlflow"
        for p in d["spec"]["ports"]
    }


# ---- job references -----------------------------------------------------------------------------


def image_workdir() -> str:
    (workdir,) = re.findall(r"^WORKDIR\s+(\S+)", DOCKERFILE.read_text(), re.M)[-1:]
    return workdir.rstrip("/")


def entrypoint_problems(entrypoint: str, root: Path = ROOT) -> list[str]:
    """The entrypoint as hyperctl parses it, and its job file (mapped from the image's WORKDIR to the
    repository at ``root``) with its --set overrides as the service's spec loader validates them."""

    argv = shlex.split(entrypoint)
    if argv[:2] != ["hyperctl", "run"]:
        return [f"entrypoint {entrypoint!r}: expected `hyperctl run JOB.yaml ...`"]
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit:
        return [f"entrypoint {entrypoint!r}: hyperctl's parser rejects it"]
    job = args.job or ""
    if job.startswith(image_workdir() + "/"):
        job = job[len(image_workdir()) + 1 :]
    if not re.fullmatch(r"jobs/[\w.-]+\.ya?ml", job):
        return [f"entrypoint {entrypoint!r}: job {args.job!r} is not a file of jobs/ in the image"]
    if not (root / job).is_file():
        return [f"entrypoint {entrypoint!r}: {job} does not exist in the repository"]
    try:
        spec = load_job(root / job, args.overrides)
    except JobSpecError as e:
        return [f"entrypoint {entrypoint!r}: {e}"]
    problems = []
    if not spec.storage.startswith("s3://"):
        problems.append(f"entrypoint {entrypoint!r}: storage {spec.storage!r} is not on S3 (pods share no disk)")
    if spec.tracking.uri not in mlflow_service_urls():
        problems.append(
            f"entrypoint {entrypoint!r}: tracking.uri {spec.tracking.uri!r} is not the MLflow "
            f"Service ({sorted(mlflow_service_urls())})"
        )
    return problems


def referenced_jobs(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w/.-])(?:/app/)?(jobs/[\w.-]+\.ya?ml)", text))


# ---- MLflow server ------------------------------------------------------------------------------


def mlflow_server_context(args: list[str], env: dict[str, str]):
    """Parse `mlflow server ARGS` with MLflow's own click command (no server is started)."""
    from mlflow.cli import server

    with mock.patch.dict(os.environ, env):  # restored afterwards
        return server.make_context("server", list(args))


def mlflow_problems(args: list[str], env: dict[str, str], hosts: list[str]) -> list[str]:
    import click
    from mlflow.server.security_utils import get_default_allowed_hosts, is_allowed_host_header

    try:
        ctx = mlflow_server_context(args, env)
    except click.ClickException as e:
        return [f"mlflow server {' '.join(args)}: {e.format_message()}"]
    p, problems = ctx.params, []
    if not p.get("serve_artifacts") or not str(p.get("artifacts_destination") or "").startswith("s3://"):
        problems.append("mlflow server: expected --serve-artifacts with an s3:// --artifacts-destination")
    if p.get("host") != "0.0.0.0":
        problems.append(f"mlflow server: --host {p.get('host')} is not reachable from other pods/nodes")
    allowed = p["allowed_hosts"].split(",") if p.get("allowed_hosts") else get_default_allowed_hosts()
    problems += [
        f"mlflow server: Host {h!r} is refused by --allowed-hosts"
        for h in hosts
        if not is_allowed_host_header(allowed, h)
    ]
    return problems


def aws_mlflow_args(config: dict[str, Any]) -> list[str]:
    (cmd,) = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    words = shlex.split(cmd.replace("$HOME", "/home/ubuntu"))
    args = words[words.index("server") + 1 :]
    return args[: args.index(">")] if ">" in args else args


# ---- tests: KubeRay -----------------------------------------------------------------------------


def test_manifests_are_the_expected_objects():
    kinds = sorted((name, d["kind"], d["apiVersion"]) for name, d in all_docs())
    assert kinds == sorted(
        [
            ("raycluster.yaml", "RayCluster", "ray.io/v1"),
            ("rayjob.yaml", "RayJob", "ray.io/v1"),
            ("mlflow.yaml", "Deployment", "apps/v1"),
            ("mlflow.yaml", "Service", "v1"),
            ("mlflow.yaml", "StatefulSet", "apps/v1"),
            ("mlflow.yaml", "Service", "v1"),
            ("secrets.example.yaml", "Secret", "v1"),
            ("secrets.example.yaml", "Secret", "v1"),
        ]
    )


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_resources_match_the_crd(kind):
    (doc,) = docs_of_kind(kind)
    assert crd_problems(doc) == []


@pytest.mark.parametrize("name,spec", cluster_specs(), ids=[n for n, _ in cluster_specs()])
def test_ray_clusters_autoscale_gpu_and_cpu_groups_with_one_image_and_env(name, spec):
    assert cluster_rules(name, spec) == []
    assert env_value(spec, "MLFLOW_TRACKING_URI") in mlflow_service_urls()


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml", "mlflow.yaml"])
def test_manifests_take_credentials_only_from_secrets(name):
    for doc in manifests()[name]:
        assert credential_problems(doc) == []
        assert image_problems(doc) == []
    ray_envs = {
        e["name"]: e for _, d in all_docs() if d["kind"] in CRD_FILES for _, c in ray_containers(d) for e in c["env"]
    }
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert ray_envs[var]["valueFrom"]["secretKeyRef"]["name"] == "hypernets-s3"


def test_core_objects_are_valid_and_consistent():
    docs = manifests()["mlflow.yaml"]
    for doc in docs:
        assert core_problems(doc, docs) == [], doc["metadata"]["name"]


def test_secret_example_holds_placeholders_only():
    text = (KUBERAY / "secrets.example.yaml").read_text()
    assert re.search(r"do not .*commit", text, re.I), "the example must warn against committing real values"
    for doc in manifests()["secrets.example.yaml"]:
        assert schema_problems(doc, core_schema("Secret")) == []
        for key, value in doc["stringData"].items():
            if SENSITIVE_ENV.search(key) or "PASSWORD" in key:
                assert PLACEHOLDER in value, f"{doc['metadata']['name']}.{key} must be a {PLACEHOLDER} placeholder"
            assert not secret_text_problems(value.replace(f":{PLACEHOLDER}@", ""), key)


def test_mlflow_server_arguments_parse_and_serve_s3_artifacts():
    (deployment,) = [d for d in manifests()["mlflow.yaml"] if d["kind"] == "Deployment"]
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["mlflow", "server"]
    assert c["image"].endswith(":" + lock_version("mlflow"))
    uri = "postgresql://u:p@mlflow-postgres:5432/mlflow"
    env = {"MLFLOW_BACKEND_STORE_URI": uri}
    assert mlflow_problems(c["args"], env, ["mlflow:5000", "mlflow.hypernets.svc:5000", "localhost:5000"]) == []
    assert mlflow_server_context(c["args"], env).params["backend_store_uri"] == uri  # read from the Secret's env
    assert any(
        e["name"] == "MLFLOW_BACKEND_STORE_URI" and e["valueFrom"]["secretKeyRef"]["name"] == "mlflow-db"
        for e in c["env"]
    )


def test_rayjob_entrypoint_runs_a_repository_job_on_s3_and_the_mlflow_service():
    (job,) = docs_of_kind("RayJob")
    assert entrypoint_problems(job["spec"]["entrypoint"]) == []


def test_every_job_referenced_in_deploy_and_docs_exists():
    texts = {p: p.read_text() for p in [*DEPLOY.rglob("*"), DOCS] if p.is_file()}
    refs = {(str(p.relative_to(ROOT)), job) for p, text in texts.items() for job in referenced_jobs(text)}
    assert refs, "no job referenced"
    missing = sorted(f"{where}: {job}" for where, job in refs if not (ROOT / job).is_file())
    assert missing == []


# ---- tests: AWS cluster launcher, Dockerfile, docs -----------------------------------------------


@functools.cache
def ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def aws_problems(config: Any) -> list[str]:
    """Ray's shipped schema, then what `ray up` does before it calls AWS: prepare_config (defaults
    merged, node types filled in) and validate_config (the schema again + the launcher's own checks)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    problems = [
        f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message[:300]}"
        for e in jsonschema.validators.validator_for(ray_schema())(ray_schema()).iter_errors(config)
    ]
    if problems:
        return problems
    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except Exception as e:  # noqa: BLE001 - any rejection is the finding
        return [f"ray up would reject it: {type(e).__name__}: {str(e)[:300]}"]
    types = config["available_node_types"]
    gpu = [t for t, v in types.items() if v["resources"].get("GPU", 0) >= 1]
    if not gpu or not all(types[t]["node_config"].get("InstanceType", "").startswith(("g", "p")) for t in gpu):
        problems.append("expected a GPU node type (g*/p* instance) with resources.GPU >= 1")
    if not any(t != config["head_node_type"] and not v["resources"].get("GPU") for t, v in types.items()):
        problems.append("expected a CPU worker node type")
    commands = [
        c
        for key in (
            "setup_commands",
            "head_setup_commands",
            "worker_setup_commands",
            "head_start_ray_commands",
            "worker_start_ray_commands",
        )
        for c in config.get(key, [])
    ]
    for c in commands:
        problems += secret_text_problems(c, f"command {c[:60]!r}")
        if subprocess.run(["bash", "-n", "-c", c], capture_output=True).returncode:
            problems.append(f"command {c[:60]!r}: bash cannot parse it")
    setup = "\n".join(config.get("setup_commands", []))
    if "-e ." not in setup or "download.pytorch.org/whl/cu" not in setup:
        problems.append("setup_commands must install the project (-e .) with a CUDA torch")
    starts = config.get("head_start_ray_commands", []) + config.get("worker_start_ray_commands", [])
    if not all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c):
        problems.append("every `ray start` needs RAY_AUTH_MODE=token")
    return problems


@functools.cache
def aws_config() -> dict[str, Any]:
    return yaml.load(AWS_CONFIG.read_text(), Loader=LOADER)


def test_aws_cluster_config_passes_rays_schema_and_ray_up_validation():
    assert aws_problems(aws_config()) == []


def test_aws_setup_installs_the_locked_torch_version():
    (cmd,) = [c for c in aws_config()["setup_commands"] if "torch==" in c]
    sed = re.search(r"\$\((sed .*?requirements\.lock)\)", cmd).group(1)
    out = subprocess.run(["bash", "-c", sed], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert out == lock_version("torch")


def test_aws_head_mlflow_server_arguments_parse():
    hosts = ["172.31.5.6:5000", "10.0.0.7:5000"]  # workers reach the head by its private IP
    assert mlflow_problems(aws_mlflow_args(aws_config()), {}, hosts) == []


def test_dockerfile_matches_setup_lock_and_manifests():
    text = DOCKERFILE.read_text()
    assert re.search(r"could not be built", text[:1500], re.I), "header must say the image was not built"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11", text, re.M)
    assert re.search(rf"^ARG TORCH_VERSION={re.escape(lock_version('torch'))}$", text, re.M)
    assert "download.pytorch.org/whl/cu" in text and "requirements.lock" in text
    assert "--no-deps --no-build-isolation -e ." in text  # as setup.sh installs the project
    for package in ("mlflow", "boto3"):
        assert f'"{package}=={lock_version(package)}"' in text
    assert image_workdir() == "/app" and re.search(r"^COPY jobs/ jobs/", text, re.M)
    assert re.search(r"^FROM \S+ AS mlflow$", text, re.M) and re.search(r"^FROM \S+ AS runtime$", text, re.M)


def test_docs_cover_the_path_from_laptop_to_cluster():
    text = DOCS.read_text()
    for needle in (
        "hyperctl submit --address http://",
        "RAY_AUTH_MODE=token",
        "gpus_per_worker",
        "RayJob",
        "ray up deploy/aws/cluster.yaml",
        "secretKeyRef",
        "s3://",
        "tracking.uri",
    ):
        assert needle in text, needle


# ---- negative tests: each check rejects a broken copy --------------------------------------------


def _mutate(
    doc: dict[str, Any], path: list[Any], value: Any = None, rename: str | None = None, delete: bool = False
) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    if rename is not None:
        node[rename] = node.pop(path[-1])
    elif delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


HEAD_C = ["spec", "headGroupSpec", "template", "spec", "containers", 0]
GPU_GROUP = ["spec", "workerGroupSpecs", 1]
CRD_MUTATIONS = {
    "typo in worker group key": (GPU_GROUP + ["maxReplicas"], {"rename": "maxReplica"}, "maxReplica: unknown field"),
    "typo in spec key": (["spec", "enableInTreeAutoscaling"], {"rename": "enableInTreeAutoScaling"}, "unknown field"),
    "typo in container key": (HEAD_C + ["imagePullPolicy"], {"rename": "imagePullPolicyy"}, "unknown field"),
    "typo in metadata": (["metadata", "labels"], {"rename": "lables"}, "lables: unknown field"),
    "unknown key under env": (
        HEAD_C + ["env", 0, "valueFrom", "secretKeyRef", "namespace"],
        {"value": "x"},
        "unknown field",
    ),
    "rayStartParams value not a string": (
        ["spec", "headGroupSpec", "rayStartParams", "num-cpus"],
        {"value": 0},
        "is not of type 'string'",
    ),
    "missing groupName": (GPU_GROUP + ["groupName"], {"delete": True}, "'groupName' is a required property"),
    "bad GPU quantity": (
        GPU_GROUP + ["template", "spec", "containers", 0, "resources", "limits", "nvidia.com/gpu"],
        {"value": "one"},
        "does not match",
    ),
    "bad auth mode": (["spec", "authOptions", "mode"], {"value": "password"}, "is not one of"),
    "int32 overflow": (GPU_GROUP + ["maxReplicas"], {"value": 2**31}, "is not a 'int32'"),
    "replicas as string": (GPU_GROUP + ["replicas"], {"value": "1"}, "is not of type 'integer'"),
    "duplicate containerPort (list-type map)": (HEAD_C + ["ports", 1, "containerPort"], {"value": 6379}, "duplicate"),
    "field behind a CEL rule": (["spec", "managedBy"], {"value": "ray.io/kuberay-operator"}, "CEL"),
    "bad cluster name": (["metadata", "name"], {"value": "Hyper_Nets"}, "does not match"),
}


@pytest.mark.parametrize("case", list(CRD_MUTATIONS))
def test_crd_validation_rejects_broken_raycluster(case):
    path, how, expected = CRD_MUTATIONS[case]
    (doc,) = docs_of_kind("RayCluster")
    problems = crd_problems(_mutate(doc, path, **{"value": None, **how}))
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    "path,how,expected",
    [
        (["spec", "entrypoint"], {"rename": "entryPoint"}, "entryPoint: unknown field"),
        (["spec", "shutdownAfterJobFinishes"], {"value": "yes"}, "is not of type 'boolean'"),
        (["spec", "rayClusterSpec", "workerGroupSpecs", 0, "minReplica"], {"value": 1}, "unknown field"),
        (["apiVersion"], {"value": "ray.io/v1alpha2"}, "is not one of"),
    ],
)
def test_crd_validation_rejects_broken_rayjob(path, how, expected):
    (doc,) = docs_of_kind("RayJob")
    problems = crd_problems(_mutate(doc, path, **how))
    assert any(expected in p for p in problems), problems


def test_cluster_rules_reject_missing_gpu_group_and_mixed_env():
    name, spec = cluster_specs()[0]
    no_gpu = copy.deepcopy(spec)
    no_gpu["workerGroupSpecs"] = [g for g in no_gpu["workerGroupSpecs"] if "nvidia.com/gpu" not in str(g)]
    assert any("no worker group with nvidia.com/gpu" in p for p in cluster_rules(name, no_gpu))
    mixed = copy.deepcopy(spec)
    mixed["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"] = []
    assert any("same env" in p for p in cluster_rules(name, mixed))
    bounds = _mutate({"spec": spec}, ["spec", "workerGroupSpecs", 0, "replicas"], 99)["spec"]
    assert any("minReplicas <= replicas <= maxReplicas" in p for p in cluster_rules(name, bounds))


@pytest.mark.parametrize(
    "env,expected",
    [
        ({"name": "AWS_SECRET_ACCESS_KEY", "value": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}, "set inline"),
        ({"name": "S3_KEY", "value": "AKIAIOSFODNN7EXAMPLE"}, "AWS access key id"),
        ({"name": "MLFLOW_TRACKING_URI", "value": "http://admin:hunter2@mlflow:5000"}, "URI with a password"),
        (
            {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "AWS_ACCESS_KEY_ID"}}},
            "does not define",
        ),
        ({"name": "DB_PASSWORD", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "pw"}}}, "secretKeyRef"),
    ],
)
def test_credential_check_rejects_inline_secrets(env, expected):
    (doc,) = docs_of_kind("RayCluster")
    bad = copy.deepcopy(doc)
    bad["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["env"].append(env)
    assert any(expected in p for p in credential_problems(bad))


def test_credential_and_image_checks_reject_secrets_in_args_and_untagged_images():
    (deployment,) = [d for d in manifests()["mlflow.yaml"] if d["kind"] == "Deployment"]
    bad = copy.deepcopy(deployment)
    c = bad["spec"]["template"]["spec"]["containers"][0]
    c["args"].append("--backend-store-uri=postgresql://mlflow:s3cret@db/mlflow")
    assert any("URI with a password" in p for p in credential_problems(bad))
    c["image"] = "postgres"
    assert any("explicit, non-latest tag" in p for p in image_problems(bad))
    (cluster,) = docs_of_kind("RayCluster")
    other = _mutate(cluster, HEAD_C + ["image"], "rayproject/ray:2.60.0")
    assert any("is not our image" in p for p in image_problems(other))
    assert credential_problems(manifests()["secrets.example.yaml"][0])  # a Secret outside the example


@pytest.mark.parametrize(
    "kind,path,value,expected",
    [
        ("Deployment", ["spec", "replica"], 1, "replica: unknown field"),
        ("Deployment", ["spec", "selector", "matchLabels", "app.kubernetes.io/name"], "other", "must match"),
        (
            "Deployment",
            ["spec", "template", "spec", "containers", 0, "readinessProbe", "httpGet", "port"],
            "web",
            "no named container port",
        ),
        ("StatefulSet", ["spec", "serviceName"], "postgres", "is no Service"),
        ("StatefulSet", ["spec", "volumeClaimTemplates", 0, "spec", "accessMode"], ["ReadWriteOnce"], "unknown field"),
        (
            "StatefulSet",
            ["spec", "template", "spec", "containers", 0, "volumeMounts", 0, "name"],
            "pgdata",
            "names no volume",
        ),
        ("Service", ["spec", "ports", 0, "targetPort"], "https", "no container port"),
        ("Service", ["spec", "selector"], {"app": "nothing"}, "matches no pod template"),
        ("Service", ["spec", "ports", 0, "port"], "5000", "is not of type 'integer'"),
        ("Service", ["metadata", "nam"], "x", "unknown field"),
    ],
)
def test_core_checks_reject_broken_objects(kind, path, value, expected):
    docs = manifests()["mlflow.yaml"]
    index = next(i for i, d in enumerate(docs) if d["kind"] == kind)
    broken = _mutate(docs[index], path, value)
    problems = core_problems(broken, [broken if i == index else d for i, d in enumerate(docs)])
    assert any(expected in p for p in problems), problems


@pytest.fixture
def stand_in_repo(tmp_path):
    """A repository with a minimal valid jobs/quickstart.yaml, so that the entrypoint check is shown
    to pass and to fail independently of the real job file."""
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "quickstart.yaml").write_text("name: quickstart\ntrain:\n  max_steps: 10\n")
    return tmp_path


def test_entrypoint_check_accepts_the_manifest_entrypoint_with_a_valid_job(stand_in_repo):
    (job,) = docs_of_kind("RayJob")
    assert entrypoint_problems(job["spec"]["entrypoint"], stand_in_repo) == []


@pytest.mark.parametrize(
    "entrypoint,expected",
    [
        (
            "hyperctl run /app/jobs/does-not-exist.yaml --set storage=s3://b/p --set tracking.uri=http://mlflow:5000",
            "does not exist",
        ),
        (
            "hyperctl run /app/jobs/quickstart.yaml --set storage=s3://b/p --set tracking.uri=http://mlflow:5000 "
            "--set model.hyper.embed_sise=4",
            "unknown key",
        ),
        ("hyperctl run /app/jobs/quickstart.yaml --set tracking.uri=http://mlflow:5000", "not on S3"),
        (
            "hyperctl run /app/jobs/quickstart.yaml --set storage=s3://b/p --set tracking.uri=http://mlflow:5001",
            "not the MLflow Service",
        ),
        ("hyperctl run /opt/quickstart.yaml --set storage=s3://b/p", "not a file of jobs/"),
        ("hyperctl runn /app/jobs/quickstart.yaml", "expected `hyperctl run"),
        ("hyperctl run /app/jobs/quickstart.yaml --frobnicate", "parser rejects"),
    ],
)
def test_entrypoint_check_rejects_bad_entrypoints(entrypoint, expected, stand_in_repo, capsys):
    problems = entrypoint_problems(entrypoint, stand_in_repo)
    assert any(expected in p for p in problems), problems


def test_job_reference_scan_finds_missing_jobs():
    text = "hyperctl submit jobs/quickstart.yaml; hyperctl run /app/jobs/ptb-hyperlstm.yaml; see myjobs/x.yaml"
    assert referenced_jobs(text) == {"jobs/quickstart.yaml", "jobs/ptb-hyperlstm.yaml"}


def test_mlflow_check_rejects_bad_arguments_and_hosts():
    (deployment,) = [d for d in manifests()["mlflow.yaml"] if d["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    typo = [a.replace("--artifacts-destination", "--artifact-destination") for a in args]
    assert any("No such option" in p for p in mlflow_problems(typo, {}, []))
    narrow = [a for a in args if not a.startswith("--allowed-hosts")] + ["--allowed-hosts=localhost"]
    assert any("refused by --allowed-hosts" in p for p in mlflow_problems(narrow, {}, ["mlflow:5000"]))
    local = [a for a in args if not a.startswith("--artifacts-destination")]
    assert any("s3://" in p for p in mlflow_problems(local, {}, []))


@pytest.mark.parametrize(
    "mutate,expected",
    [
        (lambda c: c.__setitem__("max_worker", c.pop("max_workers")), "Additional properties"),
        (lambda c: c["available_node_types"]["ray.worker.gpu"].pop("resources"), "'resources' is a required property"),
        (lambda c: c["available_node_types"]["ray.worker.gpu"].__setitem__("min_workers", "0"), "is not of type"),
        (lambda c: c["available_node_types"]["ray.worker.gpu"]["resources"].__setitem__("GPU", 0), "GPU node type"),
        (lambda c: c.__setitem__("head_node_type", "ray.head.gpu"), "ray up would reject it"),
        (
            lambda c: c["worker_start_ray_commands"].__setitem__(1, "ray start --address=$RAY_HEAD_IP:6379"),
            "RAY_AUTH_MODE=token",
        ),
        (
            lambda c: c["setup_commands"].append(
                "export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
            ),
            "AWS-secret-like",
        ),
        (lambda c: c["setup_commands"].append("cd ~/hypernets && (git pull"), "bash cannot parse"),
    ],
)
def test_aws_checks_reject_broken_configs(mutate, expected):
    config = copy.deepcopy(aws_config())
    mutate(config)
    problems = aws_problems(config)
    assert any(expected in p for p in problems), problems
