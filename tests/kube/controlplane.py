"""A real kube-apiserver + etcd for tests: start/stop, binaries, kubeconfigs.

Reusable code behind the fixtures in ``tests/kube/conftest.py``. The control
plane itself is ``hack/control-plane.sh`` (see docs/control-plane.md); this
module runs it, finds the Go-built ``kubectl`` and ``helm``, and writes
kubeconfigs for RBAC tests: one with a ServiceAccount's token (TokenRequest)
and one that impersonates a user or ServiceAccount.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from support.wait import wait_until

__all__ = [
    "REPO",
    "ControlPlane",
    "ControlPlaneError",
    "find_tool",
    "impersonating_kubeconfig",
    "service_account_kubeconfig",
    "service_account_user",
    "start_control_plane",
    "stop_control_plane",
    "tools_bin_dir",
    "wait_until",
]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "hack" / "control-plane.sh"
BUILD_HINT = "run `make tools` (or `bash hack/build-tools.sh`) to build kube-apiserver, kubectl and helm"


class ControlPlaneError(RuntimeError):
    """The control plane could not be started, or a tool it needs is missing."""


def tools_bin_dir() -> Path:
    """Where hack/build-tools.sh puts its binaries (shared by all clones on the machine)."""
    base = os.environ.get("DISCOVERD_TOOLS_DIR") or str(Path.home() / ".cache" / "discoverd" / "tools")
    return Path(base) / "bin"


def find_tool(name: str) -> Path | None:
    """Same search order as hack/control-plane.sh: $KUBEBUILDER_ASSETS, the tools dir, PATH."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    candidates = [Path(assets) / name] if assets else []
    candidates.append(tools_bin_dir() / name)
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    found = shutil.which(name)
    return Path(found) if found else None


def require_tool(name: str) -> Path:
    path = find_tool(name)
    if path is None:
        raise ControlPlaneError(f"{name} not found in $KUBEBUILDER_ASSETS, {tools_bin_dir()} or PATH: {BUILD_HINT}")
    return path


@dataclass(frozen=True)
class ControlPlane:
    """A running control plane: where it is and the tools to talk to it."""

    dir: Path
    kubeconfig: Path
    server: str
    etcd_endpoints: str
    kubectl: Path
    helm: Path
    startup_seconds: float
    exports: Mapping[str, str] = field(default_factory=dict)

    def env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        """os.environ plus the control plane's exports (KUBECONFIG, DISCOVERD_ETCD_ENDPOINTS, ...)."""
        env = {**os.environ, **self.exports}
        if kubeconfig is not None:
            env["KUBECONFIG"] = str(kubeconfig)
        return env

    def kubectl_run(
        self,
        *args: str,
        input: str | None = None,
        kubeconfig: Path | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this control plane; on ``check`` failure the error carries stderr."""
        cmd = [str(self.kubectl), "--kubeconfig", str(kubeconfig or self.kubeconfig), *args]
        proc = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, env=self.env(kubeconfig)
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def helm_run(
        self, *args: str, kubeconfig: Path | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run helm against this control plane."""
        cmd = [str(self.helm), "--kubeconfig", str(kubeconfig or self.kubeconfig), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=self.env(kubeconfig))
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc


def _parse_exports(text: str) -> dict[str, str]:
    exports: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line.removeprefix("export ").partition("=")
            exports[key.strip()] = value.strip()
    return exports


def start_control_plane(directory: Path, timeout: float = 180) -> ControlPlane:
    """``hack/control-plane.sh up --dir directory``; always call stop_control_plane afterwards."""
    kubectl = require_tool("kubectl")
    helm = require_tool("helm")
    require_tool("kube-apiserver")
    started = time.monotonic()
    try:
        proc = subprocess.run(
            ["bash", str(SCRIPT), "up", "--dir", str(directory)],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise ControlPlaneError(f"control-plane.sh up took longer than {timeout}s: {exc.stderr!r}") from exc
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise ControlPlaneError(f"control-plane.sh up failed (exit {proc.returncode}):\n{proc.stderr}")
    exports = _parse_exports(proc.stdout)
    try:
        return ControlPlane(
            dir=directory,
            kubeconfig=Path(exports["KUBECONFIG"]),
            server=exports["DISCOVERD_KUBE_SERVER"],
            etcd_endpoints=exports["DISCOVERD_ETCD_ENDPOINTS"],
            kubectl=kubectl,
            helm=helm,
            startup_seconds=elapsed,
            exports=exports,
        )
    except KeyError as exc:
        raise ControlPlaneError(f"control-plane.sh up printed no {exc} line:\n{proc.stdout}") from exc


def stop_control_plane(directory: Path) -> None:
    """``hack/control-plane.sh down``: stops exactly the pids it recorded, removes the data."""
    subprocess.run(
        ["bash", str(SCRIPT), "down", "--dir", str(directory)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


# --- kubeconfigs for RBAC tests -------------------------------------------------------------


def service_account_user(namespace: str, name: str) -> str:
    """The user name the API server gives a ServiceAccount."""
    return f"system:serviceaccount:{namespace}:{name}"


def _service_account_groups(namespace: str) -> list[str]:
    return ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"]


def _cluster_entry(cp: ControlPlane) -> dict[str, Any]:
    admin = yaml.safe_load(cp.kubeconfig.read_text())
    cluster: dict[str, Any] = admin["clusters"][0]
    return cluster


def _write_kubeconfig(cp: ControlPlane, path: Path, user_name: str, user: Mapping[str, Any]) -> Path:
    cluster = _cluster_entry(cp)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": user_name, "user": dict(user)}],
        "contexts": [{"name": user_name, "context": {"cluster": cluster["name"], "user": user_name}}],
        "current-context": user_name,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def service_account_kubeconfig(
    cp: ControlPlane, namespace: str, name: str, path: Path, *, duration: str = "1h"
) -> Path:
    """A kubeconfig that authenticates as ServiceAccount ``namespace/name`` with a bound token.

    The token comes from the TokenRequest API (``kubectl create token``), signed
    with the API server's service-account key; the ServiceAccount must exist.
    """
    token = cp.kubectl_run("create", "token", name, "-n", namespace, f"--duration={duration}").stdout.strip()
    if not token:
        raise ControlPlaneError(f"TokenRequest for {namespace}/{name} returned no token")
    return _write_kubeconfig(cp, path, f"sa-{namespace}-{name}", {"token": token})


def impersonating_kubeconfig(
    cp: ControlPlane,
    path: Path,
    *,
    user: str | None = None,
    groups: Iterable[str] = (),
    service_account: tuple[str, str] | None = None,
) -> Path:
    """A kubeconfig with the admin's credentials that impersonates ``user`` (and ``groups``).

    ``service_account=(namespace, name)`` impersonates that ServiceAccount with
    the groups the API server would give it. kubectl and helm honour the
    ``as``/``as-groups`` fields; the Python client ignores them, so give it
    :func:`service_account_kubeconfig` instead.
    """
    if service_account is not None:
        sa_namespace, sa_name = service_account
        user = service_account_user(sa_namespace, sa_name)
        groups = [*_service_account_groups(sa_namespace), *groups]
    if not user:
        raise ValueError("impersonating_kubeconfig needs user= or service_account=")
    admin = yaml.safe_load(cp.kubeconfig.read_text())
    credentials: dict[str, Any] = dict(admin["users"][0]["user"])
    credentials["as"] = user
    group_list = list(groups)
    if group_list:
        credentials["as-groups"] = group_list
    return _write_kubeconfig(cp, path, f"as-{user.replace(':', '-')}", credentials)
