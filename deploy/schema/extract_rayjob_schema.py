"""Extract from KubeRay's RayJob CRD the part of its openAPIV3Schema that deploy/rayjob.yaml uses,
into deploy/schema/rayjob-v1.schema.json (checked by tests/test_deploy.py with jsonschema).

Along every path the manifest uses, each object keeps the CRD's full list of property names and its
``required`` list (a misspelled or missing key fails, as ``kubectl apply --validate=strict`` would),
the used properties keep their schemas, the unused ones only their type. Re-run after editing the
manifest or upgrading KubeRay:

    python deploy/schema/extract_rayjob_schema.py PATH/TO/kuberay/ray-operator/config/crd/bases/ray.io_rayjobs.yaml \\
        "KubeRay COMMIT"
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
KEEP = ("type", "required", "enum", "format", "pattern", "minimum", "maximum", "x-kubernetes-int-or-string",
        "anyOf", "nullable")


def merged(values: list) -> object:
    """The union of the keys of a list of mappings (a list's items are checked by one schema)."""
    dicts = [v for v in values if isinstance(v, dict)]
    if not dicts:
        return values[0] if values else None
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out.setdefault(k, []).append(v)
    return {k: merged(v) if isinstance(v[0], (dict, list)) and len(v) > 1 else v[0] for k, v in out.items()}


def prune(schema: dict, doc: object) -> dict:
    out = {k: schema[k] for k in KEEP if k in schema}
    if "properties" in schema:
        used = doc if isinstance(doc, dict) else {}
        unknown = set(used) - set(schema["properties"])
        if unknown:
            raise SystemExit(f"not in the CRD: {sorted(unknown)}")
        out["properties"] = {name: prune(sub, used[name]) if name in used else
                             {k: sub[k] for k in ("type",) if k in sub}
                             for name, sub in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    elif isinstance(schema.get("additionalProperties"), dict):
        values = list(doc.values()) if isinstance(doc, dict) else []
        out["additionalProperties"] = prune(schema["additionalProperties"], merged(values) if values else None)
    if "items" in schema:
        out["items"] = prune(schema["items"], merged(doc) if isinstance(doc, list) and doc else None)
    return out


def main(crd_path: str, source: str) -> None:
    crd = yaml.safe_load(Path(crd_path).read_text())
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    manifest = yaml.safe_load((HERE.parent / "rayjob.yaml").read_text())
    schema = prune(version["schema"]["openAPIV3Schema"], manifest)
    schema["properties"]["metadata"] = {"type": "object"}  # validated by Kubernetes itself, not the CRD
    schema = {"$comment": f"Extracted from KubeRay's CustomResourceDefinition {crd['metadata']['name']} "
                          f"({source}), Copyright The KubeRay Authors, Apache License 2.0 "
                          f"(https://github.com/ray-project/kuberay/blob/master/LICENSE), by "
                          f"deploy/schema/extract_rayjob_schema.py.",
              "x-apiVersion": f"{crd['spec']['group']}/{version['name']}", "x-kind": crd["spec"]["names"]["kind"],
              **schema}
    (HERE / "rayjob-v1.schema.json").write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
