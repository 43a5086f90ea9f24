"""The operator's API transport (`operator.kube.Api`) when the API server cannot be reached."""

from __future__ import annotations

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from discoverd.operator import kube
from discoverd.schema import keys
from support.http import free_port


async def test_an_unreachable_api_server_is_an_api_error_with_status_0_not_another_exception() -> None:
    """The reconciler retries ApiException with back-off; anything else would be reported as unforeseen."""
    configuration = client.Configuration(host=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    api = kube.Api(client.ApiClient(configuration), "default")
    try:
        with pytest.raises(ApiException) as refused:
            await api.get(keys.Kind.INSTANCE, "web.i1")
        assert refused.value.status == 0
        assert "API server unreachable" in str(refused.value.reason)
    finally:
        await api.close()
