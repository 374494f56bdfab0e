"""Model sources: URIs and digests parsed and checked, and the policy's allowed origins."""

from __future__ import annotations

import pytest

from wasinn_operator.api import WasiNNTaskSpec
from wasinn_operator.api.modelsource import (
    ModelSourceError,
    origin_allowed,
    parse_cli_source,
    parse_uri,
)
from wasinn_operator.api.policy import PolicyError, TaskPolicy, check_spec
from wasinn_operator.api.policyflags import policy_from_settings

pytestmark = pytest.mark.unit
HEX = "c" * 64
DIGEST = f"sha256:{HEX}"


def test_uris_parse() -> None:
    url = parse_uri("https://models.example:8443/a/b/model.onnx")
    assert (url.scheme, url.host, url.path, url.file_name) == (
        "https",
        "models.example:8443",
        "/a/b/model.onnx",
        "model.onnx",
    )
    oci = parse_uri("oci://reg.example/org/effnet:v1.2")
    assert (oci.host, oci.path, oci.reference) == ("reg.example", "org/effnet", "v1.2")
    assert parse_uri(f"oci://localhost:5000/m@{DIGEST}").reference == DIGEST
    pvc = parse_uri("pvc://team-models/a/b")
    assert (pvc.host, pvc.path) == ("team-models", "a/b")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("ftp://x/model.onnx", "the scheme must be one of https://, oci://, pvc://"),
        ("https://user:pw@x/model.onnx", "credentials in the URL are not allowed"),
        ("https://x/a/../model.onnx", "'.' and '..' path segments are not allowed"),
        ("https://x/a/%2e%2e/model.onnx", "'.' and '..' path segments are not allowed"),
        ("https://x/model.onnx?a=1", "a query or fragment is not allowed"),
        ("https://x/", "must end with a file name"),
        ("oci://effnet:v1", "with the registry's host name"),
        ("oci://reg.example/effnet", "name a tag (:TAG) or a digest"),
        ("oci://reg.example/Effnet:v1", "is not a valid repository name"),
        ("oci://reg.example/effnet@sha256:12", "must be sha256:<64 hex>"),
        ("pvc://Team/x", "is not a PersistentVolumeClaim name"),
        ("pvc://team/../x", "must be relative, without '..'"),
        ("https://x/model onnx", "spaces, backslashes and control characters"),
    ],
)
def test_bad_uris_say_why(uri: str, message: str) -> None:
    with pytest.raises(ModelSourceError) as info:
        parse_uri(uri)
    assert message in str(info.value)


def test_cli_form_and_digests() -> None:
    source = parse_cli_source(f"effnet@{DIGEST}=oci://reg.example/org/effnet:v1")
    assert (source.name, source.sha256, source.digest_hex) == ("effnet", DIGEST, HEX)
    for text, message in {
        "effnet=https://x/model.onnx": "a digest (sha256:<64 hex>) is required",
        f"effnet@{DIGEST}": "give NAME@sha256:HEX=URI",
        f"../x@{DIGEST}=https://x/model.onnx": "name:",
        f"m@sha256:{'d' * 64}=oci://reg.example/m@{DIGEST}": "differs from the URI's",
    }.items():
        with pytest.raises(ModelSourceError) as info:
            parse_cli_source(text)
        assert message in str(info.value), text
    assert parse_cli_source("m=pvc://claim/dir").sha256 is None  # claims need no digest


def test_origins_match_at_a_boundary() -> None:
    assert origin_allowed("https://models.example/x.onnx", ["https://models.example"])
    assert not origin_allowed("https://models.example.evil/x.onnx", ["https://models.example"])
    assert not origin_allowed("https://models.example:9/x.onnx", ["https://models.example"])
    assert origin_allowed("oci://reg.example/org/m:v1", ["oci://reg.example/org/m"])
    assert origin_allowed(f"oci://reg.example/org/m@{DIGEST}", ["oci://reg.example/org/m"])
    assert not origin_allowed("oci://reg.example/org/mx:v1", ["oci://reg.example/org/m"])
    assert origin_allowed("pvc://team-models/x", ["pvc://"])
    assert not origin_allowed("pvc://team-models/x", [])


def spec(*sources: dict[str, str]) -> WasiNNTaskSpec:
    return WasiNNTaskSpec.model_validate(
        {"wasm": {"url": "http://shim/a"}, "modelSources": list(sources)}
    )


def test_the_policy_denies_every_origin_by_default() -> None:
    source = {"name": "m", "uri": "https://models.example/m/model.onnx", "sha256": DIGEST}
    with pytest.raises(PolicyError) as info:
        check_spec(TaskPolicy(), spec(source))
    assert str(info.value) == (
        "spec.modelSources[0].uri: https://models.example/m/model.onnx: origin not allowed "
        "(allowed: none)"
    )
    allowing = TaskPolicy(allow_model_origins=("https://models.example/",))
    check_spec(allowing, spec(source))
    with pytest.raises(PolicyError, match=r"spec\.modelSources\[1\]\.name: 'm' is named twice"):
        check_spec(allowing, spec(source, source))
    plain = {**source, "uri": "http://models.example/m/model.onnx"}
    with pytest.raises(PolicyError, match="origin not allowed"):
        check_spec(allowing, spec(plain))  # http only where an http:// origin is allowed


def test_policy_settings_and_json() -> None:
    policy = policy_from_settings(
        {
            "WASINN_ALLOW_MODEL_ORIGINS": "https://models.example/, oci://reg.example/org",
            "WASINN_MAX_MODEL_BYTES": "1GiB",
        }
    )
    assert policy.allow_model_origins == ("https://models.example/", "oci://reg.example/org")
    assert policy.max_model_bytes == 1 << 30
    assert TaskPolicy.from_json(policy.to_json()) == policy
    with pytest.raises(ValueError, match="must start with https://, http://, oci:// or pvc://"):
        TaskPolicy(allow_model_origins=("models.example",))
    with pytest.raises(ValueError, match="allowModelOrigins must be a list of URI prefixes"):
        TaskPolicy.from_json('{"allowModelOrigins": "https://x/"}')
