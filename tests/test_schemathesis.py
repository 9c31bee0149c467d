"""Schemathesis against the app's own OpenAPI (in process, lifespan run, fake encoders):
generated and mutated requests on every operation never get a 5xx, every answer has a
declared status, content type and schema, and schema-violating requests are refused.

`positive_data_acceptance` is left out: some schema-valid requests are refused on their
content, which a schema cannot state (a CSV without rows, base64 that is not an image, a
form `threshold` that is not JSON); docs/SECURITY.md has the CLI run with every check.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis import checks  # noqa: E402

from tests.test_service import clients  # noqa: E402


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory, strict_model: Path) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("st")
    for make in clients(root, strict_model):
        c = make(max_batch_rows=200)
        c.post("/listings", json={"listings": [{"posting_id": "p1", "title": "wardah lipstick"}]})
        yield schemathesis.openapi.from_asgi("/openapi.json", c.app)


schema = schemathesis.pytest.from_fixture("api_schema")

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
    checks.allow_header_conformance,
]


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_generated_requests(case: Any) -> None:
    case.call_and_validate(checks=CHECKS)
