"""Prism started once for the session: ``mock`` of the OUTSCALE API description, and
``proxy`` in front of the stateful fake. Every request the code sends is checked against
the official schema: a test fails when Prism reports a request violation."""

from __future__ import annotations

import pytest

from chalicelib import outscale
from tests.outscale_fake import OutscaleFake
from tests.prism import Prism, violations


@pytest.fixture(scope="session")
def fake_outscale():
    fake = OutscaleFake().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def prism_servers(tmp_path_factory, fake_outscale):
    """Both processes start at once (each takes seconds to load the description)."""
    folder = tmp_path_factory.mktemp("prism")
    servers = {
        "mock": Prism(folder, "mock"),
        "proxy": Prism(folder, "proxy", upstream=fake_outscale.url),
    }
    try:
        for server in servers.values():
            server.launch()
        for server in servers.values():
            server.wait()
        yield {mode: server.url for mode, server in servers.items()}
    except RuntimeError as problem:
        pytest.fail(str(problem), pytrace=False)
    finally:
        for server in servers.values():
            server.stop()


class Checked:
    """An ``outscale.Outscale`` client whose every answer is checked for violations."""

    def __init__(self, endpoint: str, monkeypatch, sleep=lambda seconds: None) -> None:
        for name, value in {
            "OSC_ACCESS_KEY": "AKIDEXAMPLE0123456789",
            "OSC_SECRET_KEY": "secret0123456789",
            "OSC_REGION": "eu-west-2",
            "OSC_ENDPOINT_API": endpoint,
        }.items():
            monkeypatch.setenv(name, value)
        self.client = outscale.connect()
        self.client._sleep = sleep
        self.sent: list[tuple[str, list[dict]]] = []
        self.client.call.session.hooks["response"].append(self._record)

    def _record(self, response, *args, **kwargs):
        header = response.headers.get("sl-violations")
        self.sent.append((response.url.rsplit("/", 1)[-1], violations(header, "request")))
        self.last_response_violations = violations(header, "response")

    def request_violations(self) -> list:
        return [found for _, found in self.sent if found]


@pytest.fixture
def mock_api(prism_servers, monkeypatch):
    checked = Checked(prism_servers["mock"], monkeypatch)
    yield checked
    assert checked.request_violations() == []


@pytest.fixture
def fake_api(prism_servers, fake_outscale, monkeypatch):
    fake_outscale.reset()
    checked = Checked(prism_servers["proxy"], monkeypatch)
    yield checked
    assert checked.request_violations() == []
