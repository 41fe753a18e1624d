"""Schemathesis against the live server's /openapi.json: no 5xx, and every answer as documented.

Every operation is called with generated data, valid and invalid (schemathesis' positive
and negative modes), once with a tenant key and once with an admin key. The completion
bodies' ``model`` is an enum of the models served in the document itself, so positive cases
name a real model and reach the engine. The checks: no server error, a status code and a
content type the document lists for the operation, and a body that matches its schema.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

schemathesis = pytest.importorskip(
    "schemathesis", reason="schemathesis is missing: pip install 'infermeter[test]'"
)

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import LiveServer, fake_service, run_server  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MAX_EXAMPLES = 20  # per operation, key and mode; the file runs in ~30 s on 2 cores


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    yield from run_server(fake_service(tmp_path_factory.mktemp("schemathesis")))


@pytest.fixture(scope="module")
def api_schema(live: LiveServer) -> Any:
    return schemathesis.openapi.from_url(live.url + "/openapi.json")


def test_the_document_names_the_models_served(live: LiveServer, api_schema: Any) -> None:
    """The completion bodies' ``model`` lists exactly the router's models, so cases use them."""
    models = sorted(live.service.router.models())
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        field = api_schema.raw_schema["components"]["schemas"][name]["properties"]["model"]
        assert sorted(field["enum"]) == models


SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,  # the same cases on every run: a failure here reproduces
    suppress_health_check=list(HealthCheck),
    database=None,
)


def failures(api_schema: Any, key: str, mode: GenerationMode, labels: Callable[[str], bool]) -> list[str]:
    """Run the generated cases of each operation ``labels`` picks; one line per failed operation."""
    found = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        if not labels(operation.label):
            continue

        @given(case=operation.as_strategy(generation_mode=mode))
        @SETTINGS
        def run(case: Any) -> None:
            case.call_and_validate(headers={"authorization": f"Bearer {key}"}, checks=CHECKS, timeout=30)

        try:
            run()
        except Unsatisfiable:  # nothing to make invalid (an operation without parameters)
            assert mode == GenerationMode.NEGATIVE, operation.label
        except (Exception, BaseExceptionGroup) as exc:  # failed checks: report every operation at once
            found.append(f"{operation.label} ({mode.value}): {exc}")
    return found


MODES = pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
ROLES = pytest.mark.parametrize("role", ["tenant", "admin"])


def key_of(live: LiveServer, role: str) -> str:
    return live.keys["alpha"] if role == "tenant" else live.admin_key


@MODES
@ROLES
def test_no_5xx_and_every_answer_as_documented(
    live: LiveServer, api_schema: Any, role: str, mode: GenerationMode
) -> None:
    """Generated requests, valid or not, with a tenant or admin key: no 5xx; status, type, body documented."""
    found = failures(api_schema, key_of(live, role), mode, lambda label: True)
    assert not found, "\n\n".join(found)


# Inputs that once gave a 5xx, kept as regressions: each is now served or refused with a 400.
FOUND = [
    # NaN probabilities used to fail the whole step (503): a tiny temperature is greedy now
    ("/v1/completions", {"prompt": "<", "temperature": 5e-324}, 200, None),
    # a negative seed used to fail the step (503): any int64 seed is mapped into numpy's domain
    ("/v1/completions", {"prompt": "hi", "seed": -1}, 200, None),
    # a lone surrogate used to raise UnicodeEncodeError in the tokenizer (500)
    ("/v1/completions", {"prompt": "\ud800"}, 400, "prompt"),
]


@pytest.mark.parametrize(("path", "body", "status", "param"), FOUND, ids=["temperature", "seed", "surrogate"])
def test_completion_inputs_found_by_fuzzing_are_not_5xx(
    live: LiveServer, path: str, body: dict[str, Any], status: int, param: str | None
) -> None:
    """Each input that once gave a 5xx is served, or refused with a 400 naming its field."""
    resp = httpx.post(
        live.url + path,
        content=json.dumps({"model": "tiny-gpt", "max_tokens": 2, **body}),  # ASCII: \ud800 escaped
        headers={"authorization": f"Bearer {live.keys['alpha']}", "content-type": "application/json"},
        timeout=30,
    )
    assert resp.status_code == status, resp.text
    if param is not None:
        assert resp.json()["error"]["param"] == param
