"""Request validation against an OpenAPI description, for the fakes (openapi-core).

A fake that holds a ``RequestCheck`` refuses every request the description does not allow
(wrong body, missing or unknown-typed parameter, undocumented path or method) with 400 and
records why in ``request_violations``, so a non-conformant call by Dynia fails its test.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from urllib.parse import unquote

from openapi_core import OpenAPI
from openapi_core.exceptions import OpenAPIError
from openapi_core.testing import MockRequest

from ._http import Request

OPENAPI_DIR = Path(__file__).resolve().parent / "openapi"


@functools.cache
def _load(spec_file: Path) -> OpenAPI:
    return OpenAPI.from_file_path(str(spec_file))  # also checks the description itself


class RequestCheck:
    """Validates requests against ``spec_file`` as if sent to ``server`` (its servers entry)."""

    def __init__(self, spec_file: Path, server: str) -> None:
        self._api = _load(spec_file)
        self._server = server

    def problem(self, request: Request) -> str | None:
        """Why the description does not allow ``request``, or None when it does."""
        body = b"" if request.body is None else json.dumps(request.body).encode()
        mock = MockRequest(
            self._server,
            request.method,
            unquote(request.path),  # as the server sees parameters: decoded
            args=request.query,
            headers=request.headers,
            data=body,
            content_type=request.headers.get("content-type", "application/json"),
        )
        try:
            self._api.validate_request(mock)
        except OpenAPIError as exc:
            causes = [str(exc)] + [str(c) for c in getattr(exc, "schema_errors", [])]
            cause = exc.__cause__
            while cause is not None:
                causes.append(str(cause))
                causes += [e.message for e in getattr(cause, "schema_errors", [])]
                cause = cause.__cause__
            return f"{request.method} {request.path}: " + "; ".join(dict.fromkeys(causes))
        return None
