"""Property-based fuzzing from the service's own OpenAPI document (schemathesis).

The operations that take input (both landmarks routes) and the key-protected /model, with
generated and mutated inputs, a bounded number of examples: no 5xx, every response conforms
to the documented status codes, content types and schemas, and schemathesis' auth check
confirms that each operation declaring the API key refuses a request without it. (The
parameterless probes are left out: a positive call checks only a schema made from the very
model that produced the body.)
(schemathesis' pytest plugin does not work with pytest 9, so its strategies are driven
through hypothesis directly; the checks are schemathesis' own.)
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import negative_data_rejection, positive_data_acceptance
from schemathesis.generation import GenerationMode

from tests.service.server import Server

MAX_EXAMPLES = 300
COUNTS: dict[str, int] = {}
API_KEY = "fuzz-key"


@pytest.fixture(scope="module")
def server_url(tiny_onnx):
    """The real server over real HTTP (an in-process ASGI client would re-run the lifespan
    on every call)."""
    server = Server.python(tiny_onnx, detector="none", max_faces=8, max_image_pixels=4_000_000,
                           api_key=API_KEY)
    try:
        server.wait_ready()
        yield server.url
    finally:
        server.close()


@pytest.fixture(scope="module")
def operations(server_url):
    schema = schemathesis.openapi.from_url(server_url + "/openapi.json")
    found = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in found} >= {"POST /landmarks", "POST /landmarks/render", "GET /model"}
    return found


CASES = [(label, mode) for label in ("POST /landmarks", "POST /landmarks/render")
         for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)] + [
    ("GET /model", GenerationMode.POSITIVE)]


@pytest.mark.parametrize("label, mode", CASES, ids=[f"{a}-{b.value}" for a, b in CASES])
def test_api_conforms_to_its_schema_and_never_500s(operations, label, mode):
    (operation,) = [op for op in operations if op.label == label]
    seen = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case):
        # An image field typed "string" cannot say "a decodable JPEG", so schema-valid but
        # undecodable bytes are rightly refused (415): that one check does not apply.
        excluded = [positive_data_acceptance]
        if getattr(case, "media_type", None) == "multipart/form-data":
            # Form encoding cannot carry a type violation faithfully: an empty array in a
            # multipart field is sent as no field at all, i.e. a valid "no boxes" request.
            excluded.append(negative_data_rejection)
        response = case.call_and_validate(headers={"X-API-Key": API_KEY}, excluded_checks=excluded)
        seen.append(response.status_code)

    fuzz()
    COUNTS[label] = len(seen)
    print(f"{label} {mode.value}: {len(seen)} cases, statuses {sorted(set(seen))}")
    assert seen and max(seen) < 500
