"""`discoverd apply`, `validate`, `get` and `describe` with version artifacts (real etcd, the real command)."""

from __future__ import annotations

import json
from pathlib import Path

from discoverd.embedded_etcd import EtcdServer
from discoverd.schema import keys
from support.cli import discoverd
from support.etcd import RawEtcd

SHA = "cd" * 32
YAML = f"""
apiVersion: discoverd.io/v1alpha1
kind: ServiceVersion
spec:
  service: web
  version: "1.0"
  artifacts:
  - {{url: "https://deploy:s3cret@example.org/web-1.0.tgz", sha256: "{SHA}", dest: app}}
  - {{url: "https://example.org/tool", sha256: "{SHA}", mode: 0755}}
  runScript: {{command: ./app/web}}
---
apiVersion: discoverd.io/v1alpha1
kind: ServiceInstance
spec: {{service: web, id: i1, serviceVersion: "1.0"}}
"""


def test_artifacts_are_applied_as_snake_case_json_and_described_without_the_password(
    etcd_server: EtcdServer, prefix: str, raw_etcd: RawEtcd, tmp_path: Path
) -> None:
    env = {"DISCOVERD_ETCD_ENDPOINTS": etcd_server.endpoint, "DISCOVERD_PREFIX": prefix}
    path = tmp_path / "web.yaml"
    path.write_text(YAML)
    applied = discoverd("apply", "-f", str(path), env=env)
    assert applied.returncode == 0, applied.stderr
    stored = json.loads(raw_etcd.get(keys.version_config(prefix, "web", "1.0")) or "{}")
    assert stored["artifacts"][1] == {"url": "https://example.org/tool", "sha256": SHA, "mode": 0o755}
    got = json.loads(discoverd("get", "versions", "-o", "json", env=env).stdout)
    assert got["items"][0]["spec"]["artifacts"][0]["dest"] == "app"
    text = discoverd("describe", "instance", "web/i1", env=env).stdout
    assert f"Artifact:   https://example.org/web-1.0.tgz sha256:{SHA[:16]}... unpacked into app" in text
    assert "Artifact:   https://example.org/tool" in text and "placed as ./tool" in text
    assert "s3cret" not in text


def test_validate_names_the_bad_artifact_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(YAML.replace("dest: app", 'dest: "../../etc"'))
    result = discoverd("validate", "-f", str(path))
    assert result.returncode == 1
    assert "spec.artifacts.0.dest" in result.stderr and "no '..'" in result.stderr
