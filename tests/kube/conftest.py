"""Fixtures for tests against a real kube-apiserver + etcd (hack/control-plane.sh).

- ``control_plane`` (session): started once, always stopped at the end. Fails,
  never skips, when kube-apiserver/kubectl/helm are missing: run ``make tools``.
- ``kube_api`` (session): a Python ``kubernetes`` ApiClient as the admin.
- ``namespace`` (function): a fresh namespace, deleted afterwards.
- ``sa_kubeconfig`` / ``impersonating_kubeconfig``: kubeconfig factories for RBAC tests.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from kube import controlplane
from kube.controlplane import ControlPlane, ControlPlaneError

STARTUP_TARGET_SECONDS = 15.0


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    directory = tmp_path_factory.mktemp("control-plane")
    error: ControlPlaneError | None = None
    try:
        cp = controlplane.start_control_plane(directory)
    except ControlPlaneError as exc:
        error = exc
    except BaseException:
        # e.g. Ctrl-C while starting: leave no process behind.
        controlplane.stop_control_plane(directory)
        raise
    if error is not None:
        controlplane.stop_control_plane(directory)
        pytest.fail(str(error), pytrace=False)
    _report(request, cp)
    try:
        yield cp
    finally:
        controlplane.stop_control_plane(directory)


def _report(request: pytest.FixtureRequest, cp: ControlPlane) -> None:
    """Print the start-up time on the terminal, past pytest's output capture."""
    over = cp.startup_seconds >= STARTUP_TARGET_SECONDS
    note = f" (over the {STARTUP_TARGET_SECONDS:.0f}s target)" if over else ""
    line = f"control plane up in {cp.startup_seconds:.1f}s{note}: {cp.server}, etcd {cp.etcd_endpoints}"
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"\n{line}")


@pytest.fixture(scope="session")
def kube_api(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(control_plane.kubeconfig))  # type: ignore[no-untyped-call]
    try:
        yield api
    finally:
        api.close()


def _namespace_name(test_name: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")
    base = base.removeprefix("test-")[:40].strip("-") or "t"
    return f"{base}-{secrets.token_hex(3)}"


@pytest.fixture
def namespace(kube_api: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new namespace named after the test. Deleting it only marks it Terminating:
    there is no controller-manager to empty it (as with envtest), so names are unique."""
    name = _namespace_name(request.node.name)
    core = client.CoreV1Api(kube_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name)


@pytest.fixture
def sa_kubeconfig(control_plane: ControlPlane, tmp_path: Path) -> Callable[[str, str], Path]:
    """``sa_kubeconfig(namespace, name)``: a kubeconfig with a TokenRequest token for that ServiceAccount."""

    def make(namespace: str, name: str) -> Path:
        path = tmp_path / f"kubeconfig-sa-{namespace}-{name}"
        return controlplane.service_account_kubeconfig(control_plane, namespace, name, path)

    return make


@pytest.fixture
def impersonating_kubeconfig(control_plane: ControlPlane, tmp_path: Path) -> Callable[..., Path]:
    """``impersonating_kubeconfig(user=..., groups=...)`` or ``(service_account=(ns, name))``:
    admin credentials impersonating that identity (kubectl/helm only)."""
    counter = iter(range(1_000_000))

    def make(
        *,
        user: str | None = None,
        groups: Iterable[str] = (),
        service_account: tuple[str, str] | None = None,
    ) -> Path:
        path = tmp_path / f"kubeconfig-as-{next(counter)}"
        return controlplane.impersonating_kubeconfig(
            control_plane, path, user=user, groups=groups, service_account=service_account
        )

    return make
