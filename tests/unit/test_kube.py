"""The API layer's error mapping: what is worth retrying and what is the user's to fix."""

from __future__ import annotations

import kopf
import pytest
from kubernetes import client

from canaria import kube
from canaria.kube import Kube, NamespaceTerminating, Rejected, Unavailable
from tests.support.processes import free_port


def test_an_api_server_that_does_not_answer_is_a_temporary_failure():
    configuration = client.Configuration(host=f"http://127.0.0.1:{free_port()}")
    configuration.retries = 0
    with pytest.raises(Unavailable, match="GET /api/v1/namespaces/ns/pods"):
        Kube(client.ApiClient(configuration)).list("v1", "Pod", "ns", {})


@pytest.mark.parametrize("status", [409, 429, 500, 503, 504])
def test_server_side_trouble_is_temporary(status):
    assert isinstance(kube._mapped_error("PATCH", "/x", status, b'{"message": "m"}'), Unavailable)


def test_rejections_terminating_namespaces_and_the_rest():
    assert isinstance(kube._mapped_error("PATCH", "/x", 422, b'{"message": "bad"}'), Rejected)
    terminating = b'{"message": "unable to create new content in namespace t because it is being terminated"}'
    assert isinstance(kube._mapped_error("POST", "/x", 403, terminating), NamespaceTerminating)
    assert isinstance(kube._mapped_error("PATCH", "/x", 403, b'{"message": "forbidden"}'), kopf.PermanentError)
