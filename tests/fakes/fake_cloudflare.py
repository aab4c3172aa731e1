"""A fake Cloudflare API v4 on loopback: zones and DNS records, as the cloudflare SDK sees them.

Bodies follow the SDK's own models (``cloudflare.types.zones.Zone``,
``cloudflare.types.dns.RecordResponse``) inside the v4 envelope ``{"success", "errors",
"messages", "result", "result_info"}``. Lists paginate with ``page``/``per_page`` and answer
``result: []`` past the last page, which is where the SDK's iterator stops.

Endpoints (under ``/client/v4``): ``GET /zones`` (``name`` filter), ``GET /zones/{id}``,
``GET|POST /zones/{id}/dns_records`` (``name`` / ``name.exact`` and ``type`` filters),
``GET|PUT|PATCH|DELETE /zones/{id}/dns_records/{record_id}``.

Origin CA (``cloudflare.types.origin_ca_certificates.OriginCACertificate``): ``POST /certificates``
signs the CSR's public key with a fake "Origin CA" root the fake holds (``origin_root_pem``) for
the requested hostnames, which must lie in the account's zones; ``GET /certificates`` (by
``zone_id``), ``GET /certificates/{id}`` and ``DELETE /certificates/{id}`` (revoke). As on the real
API, the id is the certificate's serial number in decimal.

Requests that carry the Global API Key headers (``X-Auth-Key``, ``X-Auth-Email``) get 401.

Test controls: ``add_zone(name)``; faults ``rate_limit(count, reset_in)`` (429 with
``retry-after``), ``server_errors(count, after_serving=...)`` (``after_serving``: the request
takes effect, then the answer is a 5xx), ``stall(seconds)``, ``reject_token()``,
``deny_certificates()`` (the token lacks SSL and Certificates:Edit: 403 on the Origin CA
endpoints), ``malformed_answers(body, content_type=...)`` (a raw body such as a proxy's HTML
page or JSON cut short, by default with 200; ``after_serving`` as above), and the generic
``inject``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import uuid
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ._http import FakeApiServer, Request, Response, now_iso

PREFIX = "/client/v4"
_ERRORS = {
    400: (1004, "DNS Validation Error"),
    401: (10000, "Authentication error"),
    403: (9109, "Unauthorized to access requested resource"),
    404: (
        7003,
        "Could not route to the requested resource, perhaps your object identifier is invalid?",
    ),
    405: (7001, "Method not allowed for this endpoint"),
    429: (971, "Please wait and consider throttling your request speed"),
    500: (10001, "Internal server error"),
}


VALIDITIES = (7, 30, 90, 365, 730, 1095, 5475)
_LEAF_SUBJECT = x509.Name(
    [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CloudFlare, Inc."),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "CloudFlare Origin CA"),
        x509.NameAttribute(NameOID.COMMON_NAME, "CloudFlare Origin Certificate"),
    ]
)


def _envelope(result: Any, **extra: Any) -> dict[str, Any]:
    return {"success": True, "errors": [], "messages": [], "result": result, **extra}


class FakeCloudflare(FakeApiServer):
    """The fake; point the SDK's ``base_url`` at ``base_url``."""

    api_prefix = PREFIX

    def __init__(self, token: str = "cf_fake_" + uuid.uuid4().hex) -> None:
        super().__init__(token)
        self.zones: dict[str, dict[str, Any]] = {}
        self.records: dict[str, dict[str, Any]] = {}  # id -> record (with "zone_id")
        self._accepted_token = token
        self.origin_certificates: dict[str, dict[str, Any]] = {}  # id -> certificate
        self._certificates_denied = False
        self._origin_key = ec.generate_private_key(ec.SECP256R1())
        self.origin_root = _origin_root(self._origin_key)
        self._register_routes()

    @property
    def origin_root_pem(self) -> bytes:
        return self.origin_root.public_bytes(serialization.Encoding.PEM)

    @property
    def base_url(self) -> str:
        return self.origin + PREFIX

    # -- controls ----------------------------------------------------------------------------

    def add_zone(self, name: str, *, status: str = "active") -> str:
        zone_id = uuid.uuid4().hex
        self.zones[zone_id] = {"id": zone_id, "name": name.lower(), "status": status}
        return zone_id

    def records_named(self, fqdn: str) -> list[dict[str, Any]]:
        return [r for r in self.records.values() if r["name"] == fqdn.lower()]

    def rate_limit(self, count: int = 1, *, path_prefix: str = PREFIX, reset_in: int = 1) -> None:
        def headers() -> dict[str, str]:
            return {"retry-after": str(reset_in), "ratelimit": f'"default";r=0;t={reset_in}'}

        self.inject(429, count=count, path_prefix=path_prefix, headers=headers)

    def server_errors(
        self,
        count: int = 3,
        *,
        path_prefix: str = PREFIX,
        status: int = 500,
        method: str | None = None,
        after_serving: bool = False,
    ) -> None:
        """A burst of ``count`` 5xx answers; ``after_serving``: each request took effect first."""
        self.inject(
            status, count=count, path_prefix=path_prefix, method=method, after_serving=after_serving
        )

    def deny_certificates(self) -> None:
        """From now on the token lacks SSL and Certificates:Edit."""
        self._certificates_denied = True

    def reject_token(self) -> None:
        self._accepted_token = "revoked-" + uuid.uuid4().hex

    def authorized(self, request: Request) -> bool:
        # A request carrying the Global API Key (X-Auth-Key / X-Auth-Email) is refused: Dynia
        # must authenticate with its scoped token only.
        if "x-auth-key" in request.headers or "x-auth-email" in request.headers:
            return False
        return request.headers.get("authorization", "") == f"Bearer {self._accepted_token}"

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        code, default = _ERRORS.get(status, (10000 + status, "error"))
        return {
            "success": False,
            "errors": [{"code": code, "message": message or default}],
            "messages": [],
            "result": None,
        }

    def _error(self, status: int, code: int, message: str) -> Response:
        body = self.error_body(status, message)
        body["errors"][0]["code"] = code
        return Response(status, body)

    # -- routes ------------------------------------------------------------------------------

    def _register_routes(self) -> None:
        records = PREFIX + "/zones/{zone_id}/dns_records"
        self.route("GET", PREFIX + "/zones", self._zones_list)
        self.route("GET", PREFIX + "/zones/{zone_id}", self._zones_get)
        self.route("GET", records, self._records_list)
        self.route("POST", records, self._records_create)
        one = records + "/{dns_record_id}"
        self.route("GET", one, self._records_get)
        self.route("PUT", one, self._records_put)
        self.route("PATCH", one, self._records_patch)
        self.route("DELETE", one, self._records_delete)
        certificates = PREFIX + "/certificates"
        self.route("POST", certificates, self._certificates_create)
        self.route("GET", certificates, self._certificates_list)
        self.route("GET", certificates + "/{certificate_id}", self._certificates_get)
        self.route("DELETE", certificates + "/{certificate_id}", self._certificates_revoke)

    def _page(self, request: Request, items: list[Any]) -> Response:
        try:
            page = max(1, int(float(request.query.get("page", 1))))
            per_page = max(5, min(int(float(request.query.get("per_page", 20))), 50000))
        except ValueError:
            return self._error(400, 1001, "page and per_page must be numbers")
        chosen = items[(page - 1) * per_page : page * per_page]
        info = {
            "page": page,
            "per_page": per_page,
            "count": len(chosen),
            "total_count": len(items),
            "total_pages": max(1, -(-len(items) // per_page)),
        }
        return Response(200, _envelope(chosen, result_info=info))

    def _zone_json(self, zone: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": zone["id"],
            "name": zone["name"],
            "status": zone["status"],
            "paused": False,
            "type": "full",
            "development_mode": 0,
            "name_servers": ["ada.ns.cloudflare.com", "bob.ns.cloudflare.com"],
            "original_name_servers": None,
            "original_registrar": None,
            "original_dnshost": None,
            "created_on": "2024-01-01T00:00:00.000000Z",
            "modified_on": "2024-01-01T00:00:00.000000Z",
            "activated_on": "2024-01-01T00:00:00.000000Z",
            "meta": {"step": 2, "custom_certificate_quota": 0, "page_rule_quota": 3},
            "owner": {"id": None, "type": "user", "email": None},
            "account": {"id": "0123456789abcdef0123456789abcdef", "name": "Operator"},
            "permissions": ["#dns_records:edit", "#dns_records:read", "#zone:read"],
            "plan": {"id": "0feeeeeeeeeeeeeeeeeeeeeeeeeeeeee", "name": "Free Website"},
        }

    def _zones_list(self, request: Request) -> Response:
        name = request.query.get("name", "").lower()
        zones = [
            self._zone_json(z)
            for z in sorted(self.zones.values(), key=lambda z: z["name"])
            if not name or z["name"] == name
        ]
        return self._page(request, zones)

    def _zones_get(self, request: Request) -> Response:
        zone = self.zones.get(request.params["zone_id"])
        if zone is None:
            return self._error(404, 1001, "Invalid zone identifier")
        return Response(200, _envelope(self._zone_json(zone)))

    # records

    def _zone_or_error(self, request: Request) -> dict[str, Any] | Response:
        zone = self.zones.get(request.params["zone_id"])
        return zone if zone is not None else self._error(404, 7003, "Could not route to zone")

    def _record_json(self, record: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in record.items() if k != "zone_id"}

    def _records_list(self, request: Request) -> Response:
        zone = self._zone_or_error(request)
        if isinstance(zone, Response):
            return zone
        name = (request.query.get("name.exact") or request.query.get("name") or "").lower()
        kind = request.query.get("type")
        chosen = [
            self._record_json(r)
            for r in self.records.values()
            if r["zone_id"] == zone["id"]
            and (not name or r["name"] == name)
            and (not kind or r["type"] == kind)
        ]
        return self._page(request, chosen)

    def _validate(
        self, zone: dict[str, Any], body: Any
    ) -> tuple[dict[str, Any] | None, Response | None]:
        if not isinstance(body, dict):
            return None, self._error(400, 9207, "Request body is invalid.")
        name = str(body.get("name") or "").lower().rstrip(".")
        if name in ("", "@"):
            name = zone["name"]
        elif not (name == zone["name"] or name.endswith("." + zone["name"])):
            name = f"{name}.{zone['name']}"
        kind, content, ttl = body.get("type"), body.get("content"), body.get("ttl")
        if kind not in ("A", "AAAA", "CNAME", "TXT"):
            return None, self._error(400, 9004, "This record type is not supported by the fake")
        if kind == "A":
            try:
                ipaddress.IPv4Address(str(content))
            except ValueError:
                return None, self._error(
                    400, 9005, "Content for A record must be a valid IPv4 address."
                )
        if not isinstance(ttl, int) or not (ttl == 1 or 60 <= ttl <= 86400):
            return None, self._error(
                400, 9021, "Invalid TTL. Must be between 60 and 86400, or 1 for automatic."
            )
        proxied = bool(body.get("proxied", False))
        fields = {
            "name": name,
            "type": kind,
            "content": str(content),
            "ttl": 1 if proxied else ttl,
            "proxied": proxied,
            "comment": body.get("comment"),
            "tags": list(body.get("tags") or []),
        }
        return fields, None

    def _conflict(
        self, zone: dict[str, Any], fields: dict[str, Any], own_id: str | None
    ) -> Response | None:
        for other in self.records.values():
            if (
                other["zone_id"] != zone["id"]
                or other["id"] == own_id
                or other["name"] != fields["name"]
            ):
                continue
            if (
                "CNAME" in (other["type"], fields["type"])
                and other["type"] != "TXT"
                and fields["type"] != "TXT"
            ):
                return self._error(
                    400, 81053, "An A, AAAA, or CNAME record with that host already exists."
                )
            if other["type"] == fields["type"] and other["content"] == fields["content"]:
                return self._error(400, 81058, "An identical record already exists.")
        return None

    def _records_create(self, request: Request) -> Response:
        zone = self._zone_or_error(request)
        if isinstance(zone, Response):
            return zone
        fields, problem = self._validate(zone, request.body)
        if problem is not None or fields is None:
            return problem or self._error(400, 9207, "invalid")
        conflict = self._conflict(zone, fields, None)
        if conflict is not None:
            return conflict
        stamp = now_iso()
        record = {
            "id": uuid.uuid4().hex,
            "zone_id": zone["id"],
            **fields,
            "proxiable": True,
            "settings": {},
            "meta": {},
            "created_on": stamp,
            "modified_on": stamp,
        }
        self.records[record["id"]] = record
        return Response(200, _envelope(self._record_json(record)))

    def _record_or_error(self, request: Request) -> tuple[dict[str, Any] | None, Response | None]:
        zone = self._zone_or_error(request)
        if isinstance(zone, Response):
            return None, zone
        record = self.records.get(request.params["dns_record_id"])
        if record is None or record["zone_id"] != zone["id"]:
            return None, self._error(404, 81044, "Record does not exist.")
        return record, None

    def _records_get(self, request: Request) -> Response:
        record, problem = self._record_or_error(request)
        return problem or Response(200, _envelope(self._record_json(record or {})))

    def _replace(self, request: Request, body: Any) -> Response:
        record, problem = self._record_or_error(request)
        if problem is not None or record is None:
            return problem or self._error(404, 81044, "Record does not exist.")
        zone = self.zones[record["zone_id"]]
        fields, invalid = self._validate(zone, body)
        if invalid is not None or fields is None:
            return invalid or self._error(400, 9207, "invalid")
        conflict = self._conflict(zone, fields, record["id"])
        if conflict is not None:
            return conflict
        record.update(fields, modified_on=now_iso())
        return Response(200, _envelope(self._record_json(record)))

    def _records_put(self, request: Request) -> Response:
        return self._replace(request, request.body)

    def _records_patch(self, request: Request) -> Response:
        record = self.records.get(request.params["dns_record_id"])
        merged = {**(record or {}), **(request.body if isinstance(request.body, dict) else {})}
        return self._replace(request, merged)

    def _records_delete(self, request: Request) -> Response:
        record, problem = self._record_or_error(request)
        if problem is not None or record is None:
            return problem or self._error(404, 81044, "Record does not exist.")
        del self.records[record["id"]]
        return Response(200, _envelope({"id": record["id"]}))

    # origin CA

    def _in_account(self, hostname: str) -> bool:
        name = hostname.lower()
        if name.startswith("*."):
            name = name[2:]
            if "*" in name or "." not in name:
                return False
        return any(name == z["name"] or name.endswith("." + z["name"]) for z in self.zones.values())

    def _denied(self) -> Response | None:
        if self._certificates_denied:
            return self._error(403, 10000, "Authentication error")
        return None

    def _certificates_create(self, request: Request) -> Response:
        denied = self._denied()
        if denied is not None:
            return denied
        body = request.body if isinstance(request.body, dict) else {}
        csr, problem = _parse_csr(body.get("csr"), body.get("request_type"))
        if problem is not None or csr is None:
            return self._error(400, 1010, problem or "invalid CSR")
        hostnames = body.get("hostnames")
        if not isinstance(hostnames, list) or not hostnames:
            return self._error(400, 1010, "hostnames must be a non-empty list")
        outside = [h for h in hostnames if not isinstance(h, str) or not self._in_account(h)]
        if outside:
            return self._error(
                400,
                1010,
                f"Failed to validate requested hostname {outside[0]}: This zone is either not "
                "part of your account, or you do not have access to it. Please contact support "
                "if using a multi-user organization.",
            )
        validity = body.get("requested_validity", 5475)
        if validity not in VALIDITIES:
            return self._error(400, 1012, f"requested_validity must be one of {VALIDITIES}")
        certificate = self._sign(csr, [h.lower() for h in hostnames], int(validity))
        made = {
            "id": str(certificate.serial_number),
            "certificate": certificate.public_bytes(serialization.Encoding.PEM).decode(),
            "hostnames": [h.lower() for h in hostnames],
            "expires_on": certificate.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S +0000 UTC"),
            "request_type": body["request_type"],
            "requested_validity": int(validity),
            "csr": body["csr"],
            "revoked_at": None,
        }
        self.origin_certificates[made["id"]] = made
        return Response(200, _envelope(made))

    def _sign(
        self, csr: x509.CertificateSigningRequest, hostnames: list[str], days: int
    ) -> x509.Certificate:
        now = dt.datetime.now(dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(_LEAF_SUBJECT)
            .issuer_name(self.origin_root.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hostnames]), False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(self._origin_key, hashes.SHA256())
        )

    def _certificate_json(self, certificate: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in certificate.items() if k != "revoked_at"}

    def _certificates_list(self, request: Request) -> Response:
        denied = self._denied()
        if denied is not None:
            return denied
        zone = self.zones.get(request.query.get("zone_id", ""))
        if zone is None:
            return self._error(400, 1001, "Invalid zone identifier")
        chosen = [
            self._certificate_json(c)
            for c in self.origin_certificates.values()
            if c["revoked_at"] is None
            and any(h.removeprefix("*.").endswith(zone["name"]) for h in c["hostnames"])
        ]
        return self._page(request, chosen)

    def _certificate_or_error(self, request: Request) -> dict[str, Any] | Response:
        denied = self._denied()
        if denied is not None:
            return denied
        certificate = self.origin_certificates.get(request.params["certificate_id"])
        if certificate is None:
            return self._error(404, 1003, "Certificate not found")
        return certificate

    def _certificates_get(self, request: Request) -> Response:
        found = self._certificate_or_error(request)
        if isinstance(found, Response):
            return found
        return Response(200, _envelope(self._certificate_json(found)))

    def _certificates_revoke(self, request: Request) -> Response:
        found = self._certificate_or_error(request)
        if isinstance(found, Response):
            return found
        found["revoked_at"] = found["revoked_at"] or now_iso()
        return Response(200, _envelope({"id": found["id"], "revoked_at": found["revoked_at"]}))


def _origin_root(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """A self-signed root named like Cloudflare's Origin CA for ECDSA certificates."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CloudFlare, Inc."),
            x509.NameAttribute(
                NameOID.ORGANIZATIONAL_UNIT_NAME, "CloudFlare Origin SSL ECC Certificate Authority"
            ),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "San Francisco"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "California"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def _parse_csr(
    csr_pem: Any, request_type: Any
) -> tuple[x509.CertificateSigningRequest | None, str | None]:
    """The CSR if it is well formed, self-signed correctly and of the requested key type."""
    if request_type not in ("origin-rsa", "origin-ecc", "keyless-certificate"):
        return None, "request_type must be origin-rsa, origin-ecc or keyless-certificate"
    if not isinstance(csr_pem, str):
        return None, "csr must be a PEM string"
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        if not csr.is_signature_valid:
            raise InvalidSignature
    except (ValueError, InvalidSignature):
        return None, "Failed to read the CSR: it is not a valid, signed PEM certificate request"
    wanted = ec.EllipticCurvePublicKey if request_type == "origin-ecc" else rsa.RSAPublicKey
    if request_type != "keyless-certificate" and not isinstance(csr.public_key(), wanted):
        return None, f"the CSR's key does not match request_type {request_type}"
    return csr, None
