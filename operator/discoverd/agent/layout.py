"""The state directory: where versions are installed, where instances run, and what is written there.

    <state>/versions/<service>/<version>/            cwd of download and install
    <state>/versions/<service>/<version>/.discoverd-installed   marker: hash of the version document
    <state>/instances/<service>/<id>/                 cwd of the run script
    <state>/instances/<service>/<id>/.discoverd/record.json  pid, process start time, configuration
    <state>/instances/<service>/<id>/.discoverd/logs/<step>.log  output of every step

The supervisor writes and reads these; `observe` turns a record into a live
process or a known exit. Names become path segments only after they are
checked again here (they are validated by the schema too) and the resolved
path stays under the state directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from discoverd.agent import plan
from discoverd.schema import documents, keys

__all__ = ["Layout", "Record", "UnsafePath"]

_MARKER = ".discoverd-installed"


class UnsafePath(ValueError):
    """A name that would escape the state directory."""


@dataclass(frozen=True)
class Record:
    """What the supervisor knows about an instance and must survive an agent restart."""

    ref: plan.Ref
    process: plan.Process | None
    current: plan.Target | None
    good: plan.Target | None
    restarts: int = 0


def _target_data(target: plan.Target | None) -> dict[str, Any] | None:
    if target is None:
        return None
    return {"version": target.version, "document": documents.dump(target.document), "run": documents.dump(target.run)}


def _target(ref: plan.Ref, data: Any) -> plan.Target | None:
    if not isinstance(data, dict):
        return None
    version = documents.Version.model_validate(data["document"])
    return plan.Target(ref, str(data["version"]), version, documents.Script.model_validate(data["run"]))


class Layout:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _join(self, *segments: str) -> Path:
        for segment in segments:
            reason = keys.segment_error(segment)
            if reason is not None:
                raise UnsafePath(f"{segment!r} cannot be a path segment: {reason}")
        path = self.root.joinpath(*segments).resolve()
        if not path.is_relative_to(self.root):
            raise UnsafePath(f"{path} is outside the state directory {self.root}")
        return path

    def version_dir(self, service: str, version: str) -> Path:
        return self._join("versions", service, version)

    def service_versions(self, service: str) -> list[str]:
        with contextlib.suppress(FileNotFoundError):
            return sorted(p.name for p in self._join("versions", service).iterdir() if p.is_dir())
        return []

    def instance_dir(self, ref: plan.Ref) -> Path:
        return self._join("instances", ref.service, ref.instance)

    def log_path(self, ref: plan.Ref, step: str) -> Path:
        path = self.instance_dir(ref) / ".discoverd" / "logs" / f"{step}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def record_path(self, ref: plan.Ref) -> Path:
        return self.instance_dir(ref) / ".discoverd" / "record.json"

    # install markers

    def installed(self, service: str) -> frozenset[tuple[str, str]]:
        """(version, hash) of every install marker of `service`."""
        found: set[tuple[str, str]] = set()
        for version in self.service_versions(service):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                data = json.loads((self.version_dir(service, version) / _MARKER).read_text())
                found.add((version, str(data["hash"])))
        return frozenset(found)

    def mark_installed(self, target: plan.Target) -> None:
        path = self.version_dir(target.ref.service, target.version) / _MARKER
        _write_json(path, {"hash": target.install_hash, "installed_at": time.time()})

    def unmark_installed(self, service: str, version: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.version_dir(service, version) / _MARKER).unlink()

    def remove_version(self, service: str, version: str) -> None:
        shutil.rmtree(self.version_dir(service, version), ignore_errors=True)

    # records

    def write_record(self, record: Record) -> None:
        p = record.process
        data = {
            "service": record.ref.service,
            "instance": record.ref.instance,
            "process": None
            if p is None
            else {
                "pid": p.pid,
                "start_time": p.start_time,
                "config_hash": p.config_hash,
                "version": p.version,
                "started_at": p.started_at,
                "run_id": p.run_id,
            },
            "current": _target_data(record.current),
            "good": _target_data(record.good),
            "restarts": record.restarts,
        }
        _write_json(self.record_path(record.ref), data)

    def read_record(self, ref: plan.Ref) -> Record | None:
        """The record of `ref`, or None when there is none or it cannot be read."""
        try:
            data = json.loads(self.record_path(ref).read_text())
            p = data.get("process")
            process = (
                None
                if not p
                else plan.Process(
                    int(p["pid"]),
                    int(p["start_time"]),
                    str(p["config_hash"]),
                    str(p["version"]),
                    float(p["started_at"]),
                    str(p.get("run_id", "")),
                )
            )
            return Record(
                ref,
                process,
                _target(ref, data.get("current")),
                _target(ref, data.get("good")),
                int(data.get("restarts", 0)),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def delete_record(self, ref: plan.Ref) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.record_path(ref).unlink()

    def recorded(self) -> list[plan.Ref]:
        """Every instance with a record on disk (to adopt after an agent restart)."""
        refs: list[plan.Ref] = []
        base = self.root / "instances"
        for path in sorted(base.glob("*/*/.discoverd/record.json")):
            service, instance = path.parent.parent.parent.name, path.parent.parent.name
            if keys.segment_error(service) is None and keys.segment_error(instance) is None:
                refs.append(plan.Ref(service, instance))
        return refs


def _write_json(path: Path, data: Any) -> None:
    """Write atomically: a crash of the agent leaves the old file or the new one, never half of one.

    No fsync: the rename is atomic for other processes (a restarted agent) as soon as it returns,
    and what fsync adds (surviving a power loss) buys nothing here: after a reboot no recorded
    process is alive anyway, and a record that did not reach the disk only means a fresh start.
    The fsync was a quarter of the agent's time when starting 1,000 instances (bench/agent_scale.py).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)
