"""The state directory: where versions are installed, where instances run, and where their state is saved.

    <state>/                                          0700: records hold env values
    <state>/versions/<service>/<version>/             cwd of download and install
    <state>/versions/<service>/<version>/.discoverd-installed   marker: hash of the version document
    <state>/instances/<service>/<id>/                 cwd of the run script
    <state>/logs/<service>/<id>/<step>.log            output of every step (0600; directories 0700)
    <state>/records/<service>/<id>.json               the instance's saved `model.InstanceRecord` (0600)

Records and logs live outside every directory a script runs in, so a run
script cannot forge the pid the next agent adopts (agents before format 2 kept
records in `instances/<service>/<id>/.discoverd/record.json`; such a record is
read once, migrated here, and deleted), nor plant a link that makes the agent
write a log elsewhere (`logfiles` opens them; agents before this one wrote
logs to `instances/<service>/<id>/.discoverd/logs/`: those are left where they
are, as untrusted as the rest of that directory, and go with it).

The supervisor writes and reads these; `observe` turns a record into a live
process or a known exit. Names become path segments only after they are
checked again here (they are validated by the schema too) and the resolved
path stays under the state directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import pydantic

from discoverd import logs
from discoverd.agent import logfiles, model
from discoverd.schema import keys

__all__ = ["Layout", "UnsafePath"]

log = logging.getLogger(__name__)

_MARKER = ".discoverd-installed"
_OLD_RECORD = Path(".discoverd") / "record.json"
"""Where agents before format 2 kept the record, inside the instance directory."""


class UnsafePath(ValueError):
    """A name that would escape the state directory."""


class Layout:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def prepare(self) -> None:
        """Create the state directory, readable by its owner only (also when an older agent made it)."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        for private in ("records", "logs"):
            (self.root / private).mkdir(exist_ok=True, mode=0o700)
            os.chmod(self.root / private, 0o700)

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

    def instance_dir(self, ref: model.Ref) -> Path:
        return self._join("instances", ref.service, ref.instance)

    def log_file(self, ref: model.Ref, step: str) -> Path:
        """Where the log of `step` is (nothing created: for readers); its rotated copies are `<path>.<n>`."""
        return self._log_dir(ref) / f"{step}.log"

    def log_path(self, ref: model.Ref, step: str) -> Path:
        """The log of `step` (`<step>.log` in the instance's log directory, beside its rotated copies).

        Created readable by the owner only (it may show env values), in directories only the
        agent's user can write, reached without following a link (`logfiles`). The path is not
        resolved: a link on the way is refused when the log is opened, never followed.
        """
        path = self.log_file(ref, step)
        logfiles.open_append(path).close()
        return path

    def _log_dir(self, ref: model.Ref) -> Path:
        for segment in (ref.service, ref.instance):
            reason = keys.segment_error(segment)
            if reason is not None:
                raise UnsafePath(f"{segment!r} cannot be a path segment: {reason}")
        return self.root / "logs" / ref.service / ref.instance

    def record_path(self, ref: model.Ref) -> Path:
        return self._join("records", ref.service, ref.instance + ".json")

    def instance_dirs(self) -> list[model.Ref]:
        """Every instance with files on disk: its working directory or its logs."""
        found = {
            model.Ref(p.parent.name, p.name)
            for pattern in ("instances/*/*", "logs/*/*")
            for p in self.root.glob(pattern)
            if p.is_dir()
        }
        return sorted(
            r for r in found if keys.segment_error(r.service) is None and keys.segment_error(r.instance) is None
        )

    def has_files(self, ref: model.Ref) -> bool:
        return self.instance_dir(ref).is_dir() or self._log_dir(ref).is_dir()

    def remove_instance_dir(self, ref: model.Ref) -> None:
        """Delete the instance's working directory and its logs (rmtree never follows a link it meets)."""
        shutil.rmtree(self.instance_dir(ref), ignore_errors=True)
        shutil.rmtree(self._log_dir(ref), ignore_errors=True)

    # install markers

    def installed(self, service: str) -> frozenset[tuple[str, str]]:
        """(version, hash) of every install marker of `service`."""
        found: set[tuple[str, str]] = set()
        for version in self.service_versions(service):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                data = json.loads((self.version_dir(service, version) / _MARKER).read_text())
                found.add((version, str(data["hash"])))
        return frozenset(found)

    def mark_installed(self, target: model.Target) -> None:
        path = self.version_dir(target.ref.service, target.version) / _MARKER
        _write(path, json.dumps({"hash": target.install_hash, "installed_at": time.time()}).encode())

    def installed_at(self, service: str, version: str) -> float:
        """When `version` was last installed (its marker's time); 0 when it is not installed."""
        try:
            return (self.version_dir(service, version) / _MARKER).stat().st_mtime
        except (OSError, ValueError):  # ValueError: UnsafePath, a directory no agent made
            return 0.0

    def unmark_installed(self, service: str, version: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.version_dir(service, version) / _MARKER).unlink()

    def remove_version(self, service: str, version: str) -> None:
        shutil.rmtree(self.version_dir(service, version), ignore_errors=True)

    # records: the whole InstanceRecord

    def save(self, state: model.InstanceRecord) -> None:
        _write(self.record_path(state.ref), model.Saved(state=state).model_dump_json().encode())

    def load(self, ref: model.Ref) -> model.InstanceRecord | None:
        """The saved state of `ref` (migrating a record of an older agent), or None when there is none usable."""

        def kv(**more: object) -> dict[str, object]:
            return logs.kv(service=ref.service, instance=ref.instance, **more)

        try:
            return model.Saved.model_validate_json(self.record_path(ref).read_bytes()).state.restored()
        except FileNotFoundError:
            pass
        except (OSError, pydantic.ValidationError) as error:
            log.warning("Ignored unreadable record", extra=kv(reason=str(error).splitlines()[0]))
            return None
        old = self.instance_dir(ref) / _OLD_RECORD
        try:
            state = model.from_v1(ref, json.loads(old.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("Ignored unreadable record", extra=kv(path=str(old), reason=str(error)))
            return None
        self.save(state)
        old.unlink()
        log.info("Migrated record", extra=kv(path=str(self.record_path(ref))))
        return state

    def delete_record(self, ref: model.Ref) -> None:
        for path in (self.record_path(ref), self.instance_dir(ref) / _OLD_RECORD):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def recorded(self) -> list[model.Ref]:
        """Every instance with a record on disk (to adopt after an agent restart), in either place."""
        found: set[model.Ref] = set()
        for path in self.root.glob("records/*/*.json"):
            found.add(model.Ref(path.parent.name, path.name.removesuffix(".json")))
        for path in self.root.glob(f"instances/*/*/{_OLD_RECORD}"):
            found.add(model.Ref(path.parent.parent.parent.name, path.parent.parent.name))
        return sorted(
            r for r in found if keys.segment_error(r.service) is None and keys.segment_error(r.instance) is None
        )


def _write(path: Path, data: bytes) -> None:
    """Write atomically, readable by the owner only: a crash leaves the old file or the new one, never half.

    No fsync: the rename is atomic for other processes (a restarted agent) as soon as it returns,
    and what fsync adds (surviving a power loss) buys nothing here: after a reboot no recorded
    process is alive anyway, and a record that did not reach the disk only means a fresh start.
    The fsync was a quarter of the agent's time when starting 1,000 instances (bench/agent_scale.py).
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
