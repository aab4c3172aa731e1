"""The fakes answer what the real APIs document.

DigitalOcean: every answer the fake gave during a full provider run (including injected errors)
is validated against the response schema the OpenAPI description gives for that path, method and
status. Cloudflare: every result is parsed by the SDK's own response models.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from cloudflare.types.dns.record_response import ARecord
from cloudflare.types.zones.zone import Zone as CloudflareZone
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fakes import FakeCloudflare, FakeDigitalOcean
from fakes._http import Exchange

from dynia.errors import ProviderError
from dynia.providers.base import NodeSpec
from dynia.providers.cloudflare import CloudflareDnsProvider
from dynia.providers.digitalocean.api import RetryPolicy
from dynia.providers.digitalocean.provider import DigitalOceanNodeProvider, Timeouts

# The paths the fake serves, vendored from DigitalOcean's description (Apache-2.0) by
# tests/fakes/openapi/vendor_digitalocean.py; every $ref in it is internal.
SPEC_FILE = (
    Path(__file__).resolve().parents[1] / "fakes" / "openapi" / "digitalocean" / "subset.yaml"
)
_SKIP_KEYS = {"example", "examples", "x-codeSamples", "description", "discriminator"}


@functools.cache
def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _follow(ref: str, base: Path) -> tuple[Any, Path]:
    file_part, _, fragment = ref.partition("#")
    target = (base.parent / file_part).resolve() if file_part else base
    node = _load(target)
    for part in [p for p in fragment.split("/") if p]:
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node, target


def _resolve(node: Any, base: Path, depth: int = 0, in_properties: bool = False) -> Any:
    """Inline every $ref (relative files included) and turn OpenAPI 3.0 into JSON Schema."""
    if depth > 60:
        return {}  # a recursive model: stop checking below this depth
    if isinstance(node, list):
        return [_resolve(item, base, depth) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target, target_base = _follow(node["$ref"], base)
        return _resolve(target, target_base, depth + 1)
    out = {
        key: _resolve(value, base, depth + 1, in_properties=(key == "properties"))
        for key, value in node.items()
        if in_properties or key not in _SKIP_KEYS
    }
    if not in_properties and out.pop("nullable", False):
        out = {"anyOf": [out, {"type": "null"}]}
    return out


def _response_schema(template: str, method: str, status: int) -> tuple[bool, Any]:
    """(documented?, schema or None for an empty body) for one answer of the API."""
    root = _load(SPEC_FILE)
    operation, op_file = root["paths"][template][method.lower()], SPEC_FILE
    responses = operation["responses"]
    documented = str(status) in responses
    response = responses.get(str(status), responses.get("default"))
    if "$ref" in response:
        response, response_file = _follow(response["$ref"], op_file)
    else:
        response_file = op_file
    content = (response.get("content") or {}).get("application/json")
    if content is None:
        return documented, None
    return documented, _resolve(content["schema"], response_file)


def _public_key() -> str:
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def _exercise_digitalocean(fake: FakeDigitalOcean) -> None:
    provider = DigitalOceanNodeProvider(
        fake.token,
        api_url=fake.api_url,
        region="fra1",
        ssh_port=fake.backend.ssh_port,
        timeouts=Timeouts(active=10, ssh=10, action=1, vpc_release=1, poll_interval=0.05),
        retry=RetryPolicy(attempts=3, base_delay=0.05),
    )
    key = _public_key()
    provider.ensure_network("prod")
    nodes = [
        provider.create_node(NodeSpec("prod", name, "fra1", "s-1vcpu-1gb", key))
        for name in ("ash-elk", "bold-fox", "calm-owl")
    ]
    provider.list_nodes("prod")
    rip = provider.allocate_reserved_ip("prod", "fra1")
    provider.attach_reserved_ip(rip, nodes[1].provider_id)
    provider.detach_reserved_ip(rip)
    provider.release_reserved_ip("prod", rip)
    with pytest.raises(ProviderError):
        provider.delete_network("prod")  # 409 while the VPC still has members
    fake.server_errors(1, path_prefix="/v2/droplets")
    fake.rate_limit(1, path_prefix="/v2/droplets", reset_in=0)
    for node in nodes:
        provider.delete_node("prod", node.provider_id)
    provider.delete_node("prod", nodes[0].provider_id)
    provider.delete_network("prod")
    fake.droplet_limit = 0
    with pytest.raises(ProviderError):
        provider.create_node(NodeSpec("prod", "deep-yak", "fra1", "s-1vcpu-1gb", key))
    fake.reject_token()
    with pytest.raises(ProviderError):
        provider.list_nodes("prod")


def test_digitalocean_fake_answers_match_the_openapi_description() -> None:
    with FakeDigitalOcean(per_page_max=2) as fake:
        _exercise_digitalocean(fake)
        exchanges: list[Exchange] = list(fake.exchanges)
        assert fake.request_violations == []  # every request Dynia sent is one the API allows

    checked: set[tuple[str, str, int]] = set()
    for exchange in exchanges:
        assert exchange.template, f"unrouted request {exchange.method} {exchange.path}"
        documented, schema = _response_schema(exchange.template, exchange.method, exchange.status)
        where = f"{exchange.method} {exchange.path} -> {exchange.status}"
        if exchange.status < 400:
            assert documented, f"{where}: status not documented for this operation"
        if schema is None:
            assert exchange.body is None, f"{where}: documented without a body"
        else:
            jsonschema.Draft4Validator(schema).validate(exchange.body)
        checked.add((exchange.template, exchange.method, exchange.status))

    operations = {(t, m) for t, m, _ in checked}
    assert len(operations) >= 14, sorted(operations)
    assert {s for _, _, s in checked} >= {200, 201, 202, 204, 401, 404, 409, 422, 429, 500}


def test_the_schema_check_catches_a_wrong_answer() -> None:
    _, schema = _response_schema("/v2/droplets/{droplet_id}", "GET", 200)
    with FakeDigitalOcean() as fake:
        provider = DigitalOceanNodeProvider(
            fake.token,
            api_url=fake.api_url,
            region="fra1",
            ssh_port=fake.backend.ssh_port,
            timeouts=Timeouts(poll_interval=0.05),
        )
        node = provider.create_node(
            NodeSpec("prod", "ash-elk", "fra1", "s-1vcpu-1gb", _public_key())
        )
        body = next(
            e.body
            for e in reversed(fake.exchanges)
            if e.template == "/v2/droplets/{droplet_id}" and e.status == 200
        )
    jsonschema.Draft4Validator(schema).validate(body)
    broken = {"droplet": {**body["droplet"], "status": "booting"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(schema).validate(broken)
    missing = {"droplet": {k: v for k, v in body["droplet"].items() if k != "networks"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(schema).validate(missing)
    assert node.provider_id == str(body["droplet"]["id"])


def test_cloudflare_fake_answers_parse_as_the_sdk_models() -> None:
    with FakeCloudflare() as fake:
        fake.add_zone("example.com")
        dns = CloudflareDnsProvider(fake.token, base_url=fake.base_url, max_retries=1)
        dns.upsert_a_record("app.example.com", "203.0.113.10")
        dns.upsert_a_record("app.example.com", "203.0.113.11")
        dns.list_records(dns.find_zone("example.com"))
        dns.delete_a_record("app.example.com")
        with pytest.raises(ProviderError):
            dns.find_zone("app.example.org")
        fake.reject_token()
        with pytest.raises(ProviderError):
            dns.find_zone("example.com")
        exchanges = list(fake.exchanges)

    kinds: set[str] = set()
    for exchange in exchanges:
        body = exchange.body
        assert set(body) >= {"success", "errors", "messages", "result"}
        assert body["success"] is (exchange.status < 400)
        if exchange.status >= 400:
            assert body["errors"] and all({"code", "message"} <= set(e) for e in body["errors"])
            kinds.add("error")
            continue
        result = body["result"]
        if exchange.template.endswith("/zones"):
            assert {"page", "per_page", "count", "total_count"} <= set(body["result_info"])
            for zone in result:
                CloudflareZone.model_validate(zone)
            kinds.add("zones")
        elif exchange.template.endswith("/dns_records") and exchange.method == "GET":
            for record in result:
                ARecord.model_validate(record)
            kinds.add("records")
        elif exchange.method == "DELETE":
            assert set(result) == {"id"}
            kinds.add("delete")
        else:
            ARecord.model_validate(result)
            kinds.add("record")
    assert kinds == {"zones", "records", "record", "delete", "error"}


def test_a_request_the_description_does_not_allow_is_refused_by_the_fake() -> None:
    with FakeDigitalOcean() as fake:
        provider = DigitalOceanNodeProvider(fake.token, api_url=fake.api_url, region="fra1")
        with pytest.raises(ProviderError, match="does not conform"):
            provider._api.call("creating a VPC", provider._client.vpcs.create, {"name": "x"})
        assert not [v for v in fake.vpcs.values() if not v["default"]]
        [violation] = fake.request_violations
        assert "POST /v2/vpcs" in violation and "'region' is a required property" in violation
