"""The chart renders with the real Helm engine for every value set, passes `helm lint --strict`,
and every rendered object validates against the Kubernetes OpenAPI schema of the version kind
ships and of the oldest supported version (native sidecars need 1.29)."""

from __future__ import annotations

import jsonschema
import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from conftest import CHART, NAMESPACE, load_values, of_kind

# kind v0.30's default node image is Kubernetes 1.34; 1.29 is the chart's kubeVersion floor.
KUBE_VERSIONS = ["1.34.0", "1.29.0"]

# Custom kinds: validated against their CRD (LogCluster) or not at all (third-party CRDs).
CRD_KINDS = {"LogCluster"}
THIRD_PARTY_KINDS = {"ServiceMonitor"}


def _clean(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def test_renders_objects_with_names_and_namespace(value_set, objects_of):
    """Each value set renders, and every object is named, namespaced in the release namespace and
    unique by kind and name."""
    objects = objects_of(value_set)
    assert len(objects) >= 8
    seen = set()
    for o in objects:
        meta = o["metadata"]
        assert meta["name"], o["_template"]
        assert meta["namespace"] == NAMESPACE, o["_template"]
        key = (o["kind"], meta["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)


def test_one_object_per_template(value_set, objects_of):
    """vault-helm habit: one object per template, named <component>-<kind>.yaml."""
    per_template: dict[str, int] = {}
    for o in objects_of(value_set):
        per_template[o["_template"]] = per_template.get(o["_template"], 0) + 1
    assert all(n == 1 for n in per_template.values()), per_template


@pytest.mark.parametrize("kube_version", ["v1.34.0", "v1.29.0"])
def test_helm_lint_strict(value_set, kube_version):
    """`helm lint --strict` (through the SDK) finds no warning or error."""
    report = helm.lint(CHART, load_values(value_set), strict=True, namespace=NAMESPACE, kube_version=kube_version)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_objects_validate_against_kubernetes_schema(value_set, kube_version, objects_of):
    """Every built-in object validates (strict: no unknown fields) against the Kubernetes OpenAPI
    schema; the LogCluster validates against the CRD shipped in crds/."""
    crd = yaml.safe_load((CHART / "crds" / "logcluster.yaml").read_text())
    lc_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for o in objects_of(value_set):
        obj = _clean(o)
        if o["kind"] in THIRD_PARTY_KINDS:
            continue
        if o["kind"] in CRD_KINDS:
            jsonschema.validate({k: v for k, v in obj.items() if k in ("spec", "status")}, lc_schema)
            continue
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{o['_template']}: {o['kind']}/{o['metadata']['name']} at "
                        f"{'.'.join(map(str, e.path))}: {e.message}")


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_crd_validates(kube_version):
    """The CRD in crds/ is a valid apiextensions/v1 CustomResourceDefinition for the LogCluster."""
    crd = yaml.safe_load((CHART / "crds" / "logcluster.yaml").read_text())
    kubernetes_validate.validate(crd, kube_version, strict=True)
    assert crd["spec"]["group"] == "simpleloggers.io"
    assert crd["spec"]["names"]["kind"] == "LogCluster"
    assert crd["spec"]["names"]["plural"] == "logclusters"
    assert "lc" in crd["spec"]["names"]["shortNames"]
    assert [v["name"] for v in crd["spec"]["versions"]] == ["v1alpha1"]


def test_unknown_kinds_are_only_the_expected_custom_ones(value_set, objects_of):
    """No object of a kind kubernetes-validate lacks a schema for slips by unnoticed."""
    kinds = {o["kind"] for o in objects_of(value_set)}
    for kind in kinds - CRD_KINDS - THIRD_PARTY_KINDS:
        obj = _clean(next(iter(of_kind(objects_of(value_set), kind))))
        kubernetes_validate.validate(obj, KUBE_VERSIONS[0], strict=True)


def test_logcluster_spec_matches_crd_required_fields(objects_of):
    """The chart's LogCluster fills every field the CRD requires and no field it lacks."""
    crd = yaml.safe_load((CHART / "crds" / "logcluster.yaml").read_text())
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    (lc,) = of_kind(objects_of("default"), "LogCluster")
    assert set(spec_schema.get("required", [])) <= set(lc["spec"])
    assert set(lc["spec"]) <= set(spec_schema["properties"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"spec": {**lc["spec"], "replicas": "three"}}, crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


# The formats the API server knows in a CRD schema (apiextensions-apiserver,
# pkg/apiserver/validation/formats.go): integer int32/int64, number float/double, and a fixed set
# for strings (compared without dashes, as go-openapi normalises them). It warns about any other
# ("unrecognized format") and ignores it.
INTEGER_FORMATS = {"int32", "int64"}
NUMBER_FORMATS = {"float", "double"}
STRING_FORMATS = {
    "bsonobjectid", "uri", "email", "hostname", "ipv4", "ipv6", "cidr", "mac", "uuid", "uuid3", "uuid4", "uuid5",
    "isbn", "isbn10", "isbn13", "creditcard", "ssn", "hexcolor", "rgbcolor", "byte", "password", "date", "duration",
    "datetime", "quantity",
}


def _formats(schema, path="$"):
    if isinstance(schema, dict):
        if "format" in schema:
            yield path, schema.get("type"), schema["format"]
        for k, v in schema.items():
            yield from _formats(v, f"{path}.{k}")
    elif isinstance(schema, list):
        for i, v in enumerate(schema):
            yield from _formats(v, f"{path}[{i}]")


def test_crd_formats_are_known_to_the_api_server():
    """Every `format` in the CRD is one the API server recognises for its type (e.g. no
    `uint64`, which schemars emits for u64 and the API server warns about)."""
    crd = yaml.safe_load((CHART / "crds" / "logcluster.yaml").read_text())
    found = list(_formats(crd["spec"]["versions"][0]["schema"]))
    assert found, "expected some formats to check"
    for path, type_, fmt in found:
        known = {"integer": INTEGER_FORMATS, "number": NUMBER_FORMATS}.get(type_, STRING_FORMATS)
        assert type_ in ("integer", "number", "string", None), f"{path}: a format on type {type_}"
        assert fmt.replace("-", "") in known, f"{path}: format {fmt!r} on {type_} is unknown to the API server"
