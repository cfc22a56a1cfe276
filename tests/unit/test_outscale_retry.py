"""Which failures the OUTSCALE client retries, and how long it waits. No network: the SDK's
``Call`` is replaced by a script of answers."""

import pytest
import requests

from chalicelib.outscale import ATTEMPTS, ApiError, OutcomeUnknown, Outscale

IMAGE = {"ImageId": "ami-1", "ImageName": "web", "State": "pending"}


class Scripted:
    def __init__(self, *answers):
        self.answers = list(answers)
        self.sent = []

    def api(self, action, **body):
        self.sent.append(action)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def http_error(status, code="", kind=""):
    response = requests.Response()
    response.status_code = status
    response._content = f'{{"Errors": [{{"Code": "{code}", "Type": "{kind}"}}]}}'.encode()
    return requests.HTTPError(f"{status}", response=response)


def client(*answers):
    waits = []
    api = Outscale(Scripted(*answers), sleep=waits.append, jitter=lambda low, high: high)
    return api, waits


def test_throttling_is_retried_with_growing_waits():
    api, waits = client(
        http_error(429, "24", "TooManyRequests"),
        http_error(503, "6", "ServiceUnavailable"),
        http_error(429, "25", "TooManyRequests"),
        {"Image": IMAGE},
    )
    assert api.create_image("web", "https://u").image_id == "ami-1"
    assert waits == [0.5, 1.0, 2.0]


def test_throttling_that_never_ends_gives_up():
    api, waits = client(*[http_error(503, "6")] * ATTEMPTS)
    with pytest.raises(ApiError, match="HTTP 503"):
        api.read_images(ids=["ami-1"])
    assert len(waits) == ATTEMPTS - 1 and max(waits) <= 16


def test_a_create_image_of_unknown_outcome_is_not_sent_again():
    for failure in (http_error(500, "2000", "InternalError"), requests.ConnectionError()):
        api, waits = client(failure, {"Image": IMAGE})
        with pytest.raises(OutcomeUnknown):
            api.create_image("web", "https://u")
        assert api.call.sent == ["CreateImage"] and waits == []


def test_reads_are_retried_after_a_lost_answer():
    api, _ = client(requests.ConnectionError(), {"Images": [IMAGE]})
    assert [i.image_id for i in api.read_images(names=["web"])] == ["ami-1"]


def test_a_refusal_is_raised_at_once():
    api, waits = client(http_error(409, "9015", "ResourceConflict"))
    with pytest.raises(ApiError) as refused:
        api.create_image("web", "https://u")
    assert refused.value.name_taken and not refused.value.throttled and waits == []


def test_pages_are_followed():
    api, _ = client(
        {"Images": [IMAGE], "NextPageToken": "dG9rZW4="},
        {"Images": [IMAGE | {"ImageId": "ami-2"}]},
    )
    assert [i.image_id for i in api.read_images(tags=["omi:digest=d"])] == ["ami-1", "ami-2"]
