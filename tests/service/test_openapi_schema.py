"""The live service against its own OpenAPI document: Schemathesis posts what the schema allows and what it does
not, and every answer must be documented and never a 5xx.

Every operation of the shared `gadsynth serve`'s ``/openapi.json`` (read with a key, like every route but /healthz) is
tested with the writer key, through the examples, coverage (boundary and negative values) and fuzzing phases, with
Schemathesis' default checks: ``not_a_server_error``, ``status_code_conformance``, ``content_type_conformance``,
``response_schema_conformance``, ``response_headers_conformance``, ``positive_data_acceptance``,
``negative_data_rejection``, ``unsupported_method``, ``allow_header_conformance`` and the rest that apply.
Deterministic (fixed seed, derandomized, no example database) and bounded (20 fuzzed examples per operation).

No operation is excluded. One allowance: a body the schema allows for an upload (``POST /synthesize``, STOW-RS) is
any bytes, which are not DICOM, so the service refuses it with 400 (nothing is kept); ``positive_data_acceptance``
takes 400 there. The status page (``/``, ``/login``) is not in the schema; tests/service/test_status_page.py tests it.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis

from training.bench.service_process import KEYS, ServiceProcess

#: STOW-RS and the upload routes take multipart/related, which Schemathesis cannot encode by itself: the generated
#: bytes go into one ``application/dicom`` part under this boundary.
BOUNDARY = "gadsynth-schemathesis-boundary"
RELATED = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
#: Fuzzed examples per operation (the coverage phase adds its boundary and negative cases on top).
MAX_EXAMPLES = 20
UPLOADS = r"^/(v1/)?synthesize$|^/dicomweb/studies"


@schemathesis.serializer("multipart/related")
def _related(_: Any, value: Any) -> bytes:
    data = getattr(value, "data", value)  # bytes, or schemathesis' Binary wrapper
    if isinstance(data, str):
        data = data.encode()
    elif not isinstance(data, bytes):
        data = str(data).encode()
    head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


@pytest.fixture(autouse=True)
def _pytest9_nodeid(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32.5's ``from_fixture`` relabels ``request.node._nodeid``, which pytest 9 no longer has."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@pytest.fixture(scope="module")
def api_schema(service: ServiceProcess) -> Any:
    config = schemathesis.Config.from_dict(
        {
            "seed": 20250101,
            "base-url": service.url,
            "headers": {"Authorization": f"Bearer {KEYS['writer'][0]}"},
            "request-timeout": 60,
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
            "operations": [
                {
                    "include-path-regex": UPLOADS,
                    "checks": {
                        "positive_data_acceptance": {
                            "expected-statuses": ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]
                        }
                    },
                }
            ],
        }
    )
    return schemathesis.openapi.from_url(
        f"{service.url}/openapi.json",
        config=config,
        timeout=30,
        headers={"Authorization": f"Bearer {KEYS['reader'][0]}"},
    )


schema = schemathesis.pytest.from_fixture("api_schema")


def test_openapi_is_served_and_covers_the_api(api_schema: Any) -> None:
    operations = {f"{o.method.upper()} {o.path}" for o in (r.ok() for r in api_schema.get_all_operations())}
    for expected in (
        "POST /synthesize",
        "GET /v1/jobs",
        "GET /v1/jobs/{job_id}",
        "DELETE /v1/jobs/{job_id}",
        "GET /v1/jobs/{job_id}/result",
        "GET /v1/jobs/{job_id}/preview.png",
        "POST /dicomweb/studies",
        "GET /metrics",
        "GET /readyz",
    ):
        assert expected in operations, sorted(operations)


@schema.parametrize()
def test_api_conforms_to_its_schema(case: schemathesis.Case) -> None:
    headers = {}
    if case.media_type == "multipart/related" and "content-type" not in {k.lower() for k in case.headers or {}}:
        headers["Content-Type"] = RELATED
    case.call_and_validate(headers=headers)
