"""Vendor the part of DigitalOcean's OpenAPI description the fake serves, as one small file.

Run from the repository root with the upstream checkout
(https://github.com/digitalocean/openapi, Apache-2.0) as argument:

    python tests/fakes/openapi/vendor_digitalocean.py ../digitalocean-openapi

It keeps only the paths in ``PATHS``, inlines the upstream files they reference (each one once,
under ``components/x-upstream``, so ``$ref`` stays internal), and drops code samples, examples
and prose, which the tests never read; path and query parameters lose ``readOnly``
(see ``Bundler.writable``). The output is ``digitalocean/subset.yaml``; the upstream
LICENSE goes beside it.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent / "digitalocean"
PATHS = (
    "/v2/account",
    "/v2/account/keys",
    "/v2/account/keys/{ssh_key_identifier}",
    "/v2/actions/{action_id}",
    "/v2/droplets",
    "/v2/droplets/{droplet_id}",
    "/v2/firewalls",
    "/v2/firewalls/{firewall_id}",
    "/v2/vpcs",
    "/v2/vpcs/{vpc_id}",
    "/v2/reserved_ips",
    "/v2/reserved_ips/{reserved_ip}",
    "/v2/reserved_ips/{reserved_ip}/actions",
    "/v2/reserved_ips/{reserved_ip}/actions/{action_id}",
    "/v2/tags",
)
# discriminator mappings name upstream files; anyOf/oneOf alone validate the same bodies.
DROP = {"x-codeSamples", "example", "examples", "description", "summary", "tags", "discriminator"}


class Bundler:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[Path, Any] = {}
        self.upstream: dict[str, Any] = {}  # name -> bundled node

    def load(self, path: Path) -> Any:
        if path not in self.files:
            self.files[path] = yaml.safe_load(path.read_text(encoding="utf-8"))
        return self.files[path]

    def ref(self, ref: str, base: Path) -> str:
        """The internal pointer for ``ref`` (relative to ``base``), bundling its target once."""
        file_part, _, fragment = ref.partition("#")
        target = (base.parent / file_part).resolve() if file_part else base
        relative = target.relative_to(self.root).with_suffix("").as_posix()
        name = re.sub(r"[^A-Za-z0-9_]+", "_", f"{relative}{fragment}").strip("_")
        if name not in self.upstream:
            self.upstream[name] = None  # reserve first: models may refer to themselves
            node = self.load(target)
            for part in [p for p in fragment.split("/") if p]:
                node = node[part.replace("~1", "/").replace("~0", "~")]
            self.upstream[name] = self.walk(node, target)
        return f"#/components/x-upstream/{name}"

    def path_item(self, item: dict[str, Any], base: Path) -> dict[str, Any]:
        """A path item with its operations inline: OpenAPI 3.0 allows no $ref to one."""
        out = {}
        for method, operation in item.items():
            if isinstance(operation, dict) and "$ref" in operation:
                file_part = operation["$ref"].partition("#")[0]
                target = (base.parent / file_part).resolve()
                out[method] = self.walk(self.load(target), target)
            else:
                out[method] = self.walk(operation, base)
        return out

    def writable(self, node: Any) -> Any:
        """``node`` with its internal $refs inlined and ``readOnly`` dropped.

        Upstream parameters reuse response attributes (``ssh_key_identifier`` is ``anyOf`` the
        key's read-only id and fingerprint); a validator then refuses every request that sends
        one, though the API takes them. A parameter is never read-only.
        """
        if isinstance(node, list):
            return [self.writable(item) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            return self.writable(self.upstream[node["$ref"].rsplit("/", 1)[1]])
        return {k: self.writable(v) for k, v in node.items() if k != "readOnly"}

    def walk(self, node: Any, base: Path, in_properties: bool = False) -> Any:
        if isinstance(node, list):
            return [self.walk(item, base) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            return {"$ref": self.ref(node["$ref"], base)}
        return {
            key: self.walk(value, base, in_properties=(key == "properties"))
            for key, value in node.items()
            if in_properties or key not in DROP
        }


def main(upstream: Path) -> None:
    spec_file = upstream / "specification" / "DigitalOcean-public.v2.yaml"
    bundler = Bundler(spec_file.parent.resolve())
    root = bundler.load(spec_file.resolve())
    paths = {path: bundler.path_item(root["paths"][path], spec_file.resolve()) for path in PATHS}
    for node in bundler.upstream.values():
        if isinstance(node, dict) and node.get("in") in ("path", "query"):
            node["schema"] = bundler.writable(node["schema"])
    out = {
        "openapi": root["openapi"],
        "info": {
            "title": "DigitalOcean API (the subset Dynia's test fake serves)",
            "version": root["info"]["version"],
            "license": root["info"]["license"],
        },
        "servers": root["servers"],
        "security": root["security"],
        "paths": paths,
        "components": {
            "securitySchemes": root["components"]["securitySchemes"],
            "x-upstream": dict(sorted(bundler.upstream.items())),
        },
    }
    HERE.mkdir(parents=True, exist_ok=True)
    header = (
        "# Generated by tests/fakes/openapi/vendor_digitalocean.py from\n"
        "# https://github.com/digitalocean/openapi (Apache-2.0, see LICENSE): only the paths\n"
        "# the fake serves; code samples, examples and prose removed. Do not edit by hand.\n"
    )
    text = yaml.safe_dump(out, sort_keys=False, width=100, allow_unicode=True)
    (HERE / "subset.yaml").write_text(header + text, encoding="utf-8")
    shutil.copyfile(upstream / "LICENSE", HERE / "LICENSE")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
