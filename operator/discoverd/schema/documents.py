"""One pydantic model per etcd JSON document: the seed schema, its extensions, and status.

Field names are the seed's snake_case, as stored in etcd. Each model also
reads the camelCase spelling (custom resources use it, see `resources`) and
the short keys the original Go discoverd stored (`download`, `install`,
`run`); it always writes the README's `*_script` names. Unknown fields are
kept (`extra="allow"`) so older and newer writers coexist.

`parse()` is the one way raw bytes from etcd become a model; it raises
`InvalidDocument` naming the key and the field, and nothing else: the bytes
go through `untrusted` (size, depth, UTF-8, NaN caps) first, and every
number has a named bound (`MIN_*`/`MAX_*` below, listed in
docs/configuration.md), so a value that validates is safe to act on.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import signal
import urllib.parse
from typing import Annotated, Any, ClassVar, Self, TypeVar

import pydantic
from pydantic import AfterValidator, AliasChoices, AliasGenerator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel

from discoverd.errors import InvalidDocument
from discoverd.schema import keys, untrusted

__all__ = [
    "DEFAULT_STEP_TIMEOUT",
    "MAX_AGENT_VERSION_BYTES",
    "MAX_ARG_BYTES",
    "MAX_ARTIFACTS",
    "MAX_ARTIFACT_DEST_BYTES",
    "MAX_ARTIFACT_MODE",
    "MAX_EXIT_CODE",
    "MAX_FAILURE_THRESHOLD",
    "MAX_HEALTH_INTERVAL",
    "MAX_HOSTNAME_BYTES",
    "MAX_LEASE_TTL",
    "MAX_MESSAGE_BYTES",
    "MAX_MIN_HEALTHY_SECONDS",
    "MAX_PHASE_HISTORY",
    "MAX_PID",
    "MAX_RESTARTS",
    "MAX_RESTART_TOKEN",
    "MAX_STATUS_BYTES",
    "MAX_STEP_TIMEOUT",
    "MAX_STOP_TIMEOUT",
    "MAX_URL_BYTES",
    "MIN_HEALTH_INTERVAL",
    "RESERVED_ENV_PREFIX",
    "AgentStatus",
    "Arg",
    "Artifact",
    "Document",
    "DrainPhase",
    "EnvName",
    "Extract",
    "HealthCheck",
    "Instance",
    "InstanceBody",
    "InstanceRef",
    "InstanceState",
    "InstanceStatus",
    "Listing",
    "Message",
    "NotBool",
    "Phase",
    "PhaseChange",
    "Resources",
    "RestartToken",
    "Script",
    "Segment",
    "Server",
    "ServerBody",
    "Version",
    "VersionBody",
    "clip",
    "dump",
    "dumps",
    "model_for",
    "parse",
    "parse_at",
    "validate",
    "validation_error",
]

DEFAULT_STEP_TIMEOUT = 600

# Bounds on numbers (docs/configuration.md, "Limits"): a value outside is an invalid document.
MAX_STEP_TIMEOUT = 7 * 24 * 3600
"""Longest `timeout` of a script, in seconds (a week); 0 still means no limit."""
MIN_HEALTH_INTERVAL = 0.2
"""Shortest health-check `interval`, in seconds: a check is a process spawned each time."""
MAX_HEALTH_INTERVAL = 24 * 3600
MAX_FAILURE_THRESHOLD = 1000
MAX_MIN_HEALTHY_SECONDS = 24 * 3600
MAX_STOP_TIMEOUT = 24 * 3600
MAX_ARG_BYTES = 128 * 1024 - 1
"""Longest command, argument, or `NAME=value` env entry, in UTF-8 bytes (Linux's MAX_ARG_STRLEN less its NUL)."""
MAX_PID = 1 << 22
"""Linux's PID_MAX_LIMIT: no pid is larger."""
MAX_EXIT_CODE = 255
"""Exit codes are 0..255; a negative code is the signal that ended the process."""
MAX_RESTARTS = (1 << 31) - 1
MAX_LEASE_TTL = 9_000_000_000
"""etcd's own maximum lease TTL, in seconds."""
MAX_MESSAGE_BYTES = 4096
"""Longest `message` of a status document, in UTF-8 bytes (Kubernetes caps a condition message at 32 KiB)."""
MAX_HOSTNAME_BYTES = 253
"""Longest `hostname` of an agent status (a DNS name's limit)."""
MAX_AGENT_VERSION_BYTES = 128
MAX_STATUS_BYTES = 64 * 1024
"""Largest status document (agent or instance) as stored: its capped fields take a fraction of it, the
rest leaves room for fields of newer agents, but one server cannot fill a reader's memory."""
MAX_RESTART_TOKEN = 256
"""Longest `restart_token`, in characters (`discoverd restart` writes a timestamp of 27)."""
RESERVED_ENV_PREFIX = "DISCOVERD_"
"""Env names the agent sets itself (and uses to recognise its processes): a document cannot set them."""

Segment = Annotated[str, AfterValidator(keys.validate_segment)]
"""A name or ID that becomes a path segment: non-empty, no '/', not '.' or '..', no control characters."""


def _quoted(value: str, limit: int = 64) -> str:
    """`value` quoted for an error message, cut to `limit` characters (a hostile value may be huge)."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "..."


def _text(value: str) -> str:
    if untrusted.first_surrogate(value) is not None:
        raise ValueError("must be valid Unicode text (it holds a lone surrogate)")
    if "\0" in value:
        raise ValueError("must not contain NUL (\\0): the kernel would cut it there")
    return value


def _arg(value: str) -> str:
    _text(value)
    if len(value.encode()) > MAX_ARG_BYTES:
        raise ValueError(f"must be at most {MAX_ARG_BYTES} bytes (the kernel's limit for one argument)")
    return value


def clip(text: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """`text` cut to at most `limit` UTF-8 bytes (at a character boundary), saying how much was cut.

    What a writer does to its own text before it writes a capped field (never a reader: a reader
    refuses a document over its cap)."""
    data = text.encode("utf-8", "backslashreplace")  # a lone surrogate becomes its escape: writable text
    if len(data) <= limit:
        return data.decode()
    note = f"... ({len(data)} bytes, cut)"
    head = data[: max(0, limit - len(note.encode()))].decode("utf-8", "ignore")
    return head + note if limit >= len(note.encode()) else head


def _capped(limit: int) -> AfterValidator:
    def check(value: str) -> str:
        size = len(value.encode())
        if size > limit:
            raise ValueError(f"is {size} bytes, over its cap of {limit} bytes")
        return value

    return AfterValidator(check)


Message = Annotated[str, _capped(MAX_MESSAGE_BYTES)]
"""A status `message`: text of at most `MAX_MESSAGE_BYTES` (writers `clip` theirs first)."""


def _env_name(value: str) -> str:
    _text(value)
    if not value:
        raise ValueError("an environment variable name must not be empty")
    if "=" in value:
        raise ValueError(f"environment variable name {_quoted(value)} must not contain '='")
    if value.startswith(RESERVED_ENV_PREFIX):
        raise ValueError(
            f"environment variable name {_quoted(value)} is reserved: the agent sets {RESERVED_ENV_PREFIX}* itself"
        )
    return value


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return value


NotBool = BeforeValidator(_not_bool)
"""On a number: refuse true/false, which pydantic would otherwise read as 1/0 (`"timeout": true` is a mistake)."""

Arg = Annotated[str, AfterValidator(_arg)]
"""A command, argument or env value: text without NUL, within the kernel's length for one argument."""
EnvName = Annotated[str, AfterValidator(_env_name)]
"""An environment variable name: non-empty, no '=' or NUL, not one of the agent's own DISCOVERD_*."""
RestartToken = Annotated[str, Field(max_length=MAX_RESTART_TOKEN), AfterValidator(_text)]
"""Extension: any text; a change restarts the instance with no version change (`discoverd restart`)."""


def _both_spellings(field: str) -> AliasChoices:
    return AliasChoices(field, to_camel(field))


class Document(BaseModel):
    """Base of every stored document: keeps unknown fields, reads snake_case and camelCase."""

    keep_defaults: ClassVar[bool] = False
    """Status documents are written whole; configuration only with the fields its writer set."""
    max_bytes: ClassVar[int] = untrusted.MAX_VALUE_BYTES
    """Largest stored value `parse` reads for this document."""
    kept_by_apply: ClassVar[frozenset[str]] = frozenset()
    """Fields commands set rather than configuration (`discoverd restart`, `drain`): `apply -f` keeps
    what etcd has when its YAML leaves them out, as `kubectl apply` keeps fields it never set."""

    model_config = ConfigDict(
        extra="allow",
        populate_by_name=True,
        allow_inf_nan=False,
        alias_generator=AliasGenerator(validation_alias=_both_spellings, serialization_alias=to_camel),
    )


def _signal_name(value: str) -> str:
    name = value.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    if not isinstance(getattr(signal, name, None), signal.Signals):
        raise ValueError(f"{_quoted(value)} is not a signal name such as SIGTERM")
    return name


class Script(Document):
    """A command run with an argv list, never through a shell."""

    command: Arg = ""
    argv: list[Arg] = Field(default_factory=list)
    timeout: Annotated[int, Field(ge=0, le=MAX_STEP_TIMEOUT), NotBool] | None = None
    """Seconds; bounds download and install (None: 600, 0: no limit). The run script has none."""
    env: dict[EnvName, Arg] | None = None
    """Extension: added to the environment."""

    @pydantic.field_validator("env")
    @classmethod
    def _env_entries_fit(cls, env: dict[str, str] | None) -> dict[str, str] | None:
        for name, value in (env or {}).items():
            if len(name.encode()) + 1 + len(value.encode()) > MAX_ARG_BYTES:
                raise ValueError(f"{name}=... must be at most {MAX_ARG_BYTES} bytes (the kernel's limit)")
        return env

    @property
    def empty(self) -> bool:
        return not self.command

    @property
    def timeout_seconds(self) -> float | None:
        limit = DEFAULT_STEP_TIMEOUT if self.timeout is None else self.timeout
        return None if limit == 0 else float(limit)


class HealthCheck(Script):
    """Extension: a script run every `interval` seconds once the run script is up."""

    interval: Annotated[float, Field(ge=MIN_HEALTH_INTERVAL, le=MAX_HEALTH_INTERVAL), NotBool] = 10.0
    failure_threshold: Annotated[int, Field(ge=1, le=MAX_FAILURE_THRESHOLD), NotBool] = 3


class Resources(Document):
    """Extension: limits of the cgroup each instance of this version runs in: memoryMb (MiB), cpuMillis (500 = half a CPU), pidsMax (processes and threads); an absent field is no limit."""

    memory_mb: Annotated[int, Field(ge=1, le=2**30), NotBool] | None = None
    """Memory in MiB (cgroup v1 `memory.limit_in_bytes`, v2 `memory.max`)."""
    cpu_millis: Annotated[int, Field(ge=10, le=1_000_000), NotBool] | None = None
    """CPU time in thousandths of a CPU: 500 = half a CPU (`cpu.cfs_quota_us` per 100 ms, v2 `cpu.max`)."""
    pids_max: Annotated[int, Field(ge=1, le=4_194_304), NotBool] | None = None
    """Processes and threads (`pids.max`)."""


MAX_ARTIFACTS = 64
"""Most `artifacts` of one version document."""
MAX_URL_BYTES = 8192
"""Longest artifact `url`, in UTF-8 bytes (what common HTTP servers accept in a request line)."""
MAX_ARTIFACT_DEST_BYTES = 4096
"""Longest artifact `dest` (Linux's PATH_MAX)."""
MAX_ARTIFACT_MODE = 0o777
"""Largest artifact `mode`: permission bits only (no setuid, setgid or sticky bit)."""


def _artifact_url(value: str) -> str:
    _text(value)
    if len(value.encode()) > MAX_URL_BYTES:
        raise ValueError(f"must be at most {MAX_URL_BYTES} bytes")
    if any(c.isspace() or ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in value):
        raise ValueError(f"{_quoted(value)} must not contain spaces or control characters (percent-encode them)")
    parts = urllib.parse.urlsplit(value)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"{_quoted(value)} must be an http:// or https:// URL")
    try:
        parts.port  # noqa: B018 (raises ValueError for a port out of range)
    except ValueError:
        raise ValueError(f"{_quoted(value)} has an invalid port") from None
    if not parts.hostname:
        raise ValueError(f"{_quoted(value)} has no host")
    return value


def _artifact_dest(value: str) -> str:
    _text(value)
    if len(value.encode()) > MAX_ARTIFACT_DEST_BYTES:
        raise ValueError(f"must be at most {MAX_ARTIFACT_DEST_BYTES} bytes")
    if value.startswith("/"):
        raise ValueError(f"{_quoted(value)} must be a path relative to the version directory, not absolute")
    for part in value.split("/"):
        if part in ("", "."):
            continue  # "a//b", "./a", "a/": the same directory
        if part == "..":
            raise ValueError(f"{_quoted(value)} must stay inside the version directory: no '..'")
        reason = keys.segment_error(part)
        if reason is not None:
            raise ValueError(f"{_quoted(value)} must stay inside the version directory: {part!r} {reason}")
    return value


def _mode(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= MAX_ARTIFACT_MODE:
        raise ValueError(
            f"{value} is not permission bits 0..{MAX_ARTIFACT_MODE} (0777); JSON has no octal: 0755 is written 493"
        )
    return value


def _hex_digest(length: int) -> Any:
    def check(value: str) -> str:
        if len(value) != length or any(c not in "0123456789abcdefABCDEF" for c in value):
            raise ValueError(f"must be {length} hexadecimal digits")
        return value.lower()

    return AfterValidator(check)


class Extract(enum.StrEnum):
    """What to do with an artifact once verified."""

    AUTO = "auto"
    """Unpack it if its URL names an archive (.tar, .tar.gz, .tgz, .tar.xz, .txz, .tar.bz2, .tbz2, .zip)."""
    NONE = "none"
    """Place the file as it is."""


class Artifact(Document):
    """Extension: a file fetched by the agent (no shell), verified by sha256 or sha512, cached, placed in dest."""

    # Exactly one of `sha256` and `sha512`. `dest` is a directory relative to the version
    # directory (default: the version directory itself). An archive is unpacked there; any other
    # file is placed there under the last segment of the URL's path. `mode` is the permission bits
    # of the placed file (default 0644), or of every regular file unpacked from an archive
    # (default: the archive's, without setuid, setgid and sticky bits). JSON has no octal: 0755
    # is written 493 (YAML takes 0755), as Kubernetes' `defaultMode`.

    url: Annotated[str, AfterValidator(_artifact_url), Field(max_length=MAX_URL_BYTES)]
    sha256: Annotated[str, _hex_digest(64), Field(pattern="^[0-9a-fA-F]{64}$")] | None = None
    sha512: Annotated[str, _hex_digest(128), Field(pattern="^[0-9a-fA-F]{128}$")] | None = None
    extract: Extract = Extract.AUTO
    dest: Annotated[str, AfterValidator(_artifact_dest), Field(max_length=MAX_ARTIFACT_DEST_BYTES)] = "."
    mode: Annotated[int, Field(ge=0, le=MAX_ARTIFACT_MODE), NotBool, BeforeValidator(_mode)] | None = None

    @pydantic.model_validator(mode="after")
    def _one_digest(self) -> Self:
        if (self.sha256 is None) == (self.sha512 is None):
            raise ValueError("needs exactly one of sha256 and sha512 (the digest the download must have)")
        if self.extract is Extract.NONE or not self.archive:
            reason = keys.segment_error(self.file_name)
            if reason is not None:
                raise ValueError(f"url must end with a file name to place the file under: {self.file_name!r} {reason}")
        return self

    @property
    def algorithm(self) -> str:
        """`sha256` or `sha512`: the cache directory it is kept in."""
        return "sha256" if self.sha256 is not None else "sha512"

    @property
    def digest(self) -> str:
        """The expected digest, lower-case hex."""
        return self.sha256 if self.sha256 is not None else str(self.sha512)

    @property
    def file_name(self) -> str:
        """The last segment of the URL's path, percent-decoded: the placed file's name."""
        path = urllib.parse.urlsplit(self.url).path
        return urllib.parse.unquote(path.rsplit("/", 1)[-1], errors="surrogateescape")

    @property
    def archive(self) -> str | None:
        """The archive format to unpack (`tar`, `zip`) with `extract: auto`, by the URL's ending; None: a file."""
        if self.extract is Extract.NONE:
            return None
        name = self.file_name.lower()
        if name.endswith(".zip"):
            return "zip"
        if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2", ".tbz")):
            return "tar"
        return None


class VersionBody(Document):
    """How to download, install and run one version of a service (everything but its name)."""

    download_script: Script = Field(
        default_factory=Script,
        validation_alias=AliasChoices("download_script", "downloadScript", "download"),
    )
    install_script: Script = Field(
        default_factory=Script,
        validation_alias=AliasChoices("install_script", "installScript", "install"),
    )
    run_script: Script = Field(default_factory=Script, validation_alias=AliasChoices("run_script", "runScript", "run"))
    health_check: HealthCheck | None = None
    min_healthy_seconds: Annotated[float, Field(ge=0, le=MAX_MIN_HEALTHY_SECONDS), NotBool] = 5.0
    stop_signal: Annotated[str, AfterValidator(_signal_name)] = "SIGTERM"
    stop_timeout: Annotated[float, Field(ge=0, le=MAX_STOP_TIMEOUT), NotBool] = 10.0
    resources: Resources | None = None
    artifacts: Annotated[list[Artifact], Field(max_length=MAX_ARTIFACTS)] | None = None
    """Extension: fetched, verified and placed by the agent before the download script runs."""


class Version(VersionBody):
    """`<prefix>/services/<service>/versions/<version>/config/details`; `name` is the service."""

    name: Segment


class InstanceBody(Document):
    """Which version an instance runs and how its run script differs (everything but its name)."""

    service_version: Segment
    run_script: Script = Field(default_factory=Script, validation_alias=AliasChoices("run_script", "runScript", "run"))
    restart_token: RestartToken | None = None
    """Extension: a new value restarts the instance, same version, no install (docs/operating.md, "Restart")."""

    kept_by_apply = frozenset({"restart_token"})


class Instance(InstanceBody):
    """`<prefix>/services/<service>/instances/<id>/config/details`; `name` is the service."""

    name: Segment


class InstanceRef(Document):
    """One entry of a server's `service_instances`: `name` is the service, `id` the instance."""

    name: Segment
    id: Segment


class ServerBody(Document):
    """The instances a server runs."""

    service_instances: list[InstanceRef]
    drained: bool = False
    """Extension: the agent stops every instance, one at a time, and starts none; rollouts hold its instances."""
    drain_deadline: pydantic.AwareDatetime | None = None
    """Extension: once past, the agent kills the instances still running at once, without their grace."""

    kept_by_apply = frozenset({"drained", "drain_deadline"})

    @pydantic.model_validator(mode="after")
    def _no_duplicates(self) -> Self:
        seen: set[tuple[str, str]] = set()
        for ref in self.service_instances:
            if (ref.name, ref.id) in seen:
                raise ValueError(f"instance {ref.name}/{ref.id} is listed twice")
            seen.add((ref.name, ref.id))
        return self


class Server(ServerBody):
    """`<prefix>/servers/<id>/config/details`."""


class Phase(enum.StrEnum):
    """Where an instance is in its life (DESIGN section 2)."""

    PENDING = "Pending"
    DOWNLOADING = "Downloading"
    INSTALLING = "Installing"
    STARTING = "Starting"
    RUNNING = "Running"
    UNHEALTHY = "Unhealthy"
    BACK_OFF = "BackOff"
    FAILED = "Failed"
    ROLLED_BACK = "RolledBack"
    STOPPING = "Stopping"
    DRAINED = "Drained"
    """Extension: stopped because its server is drained (`discoverd drain`)."""


class DrainPhase(enum.StrEnum):
    """Extension: where a drained server's agent is (its status's `drain`)."""

    DRAINING = "Draining"
    """Instances are still being stopped."""
    DRAINED = "Drained"
    """Nothing runs."""


class AgentStatus(Document):
    """`<prefix>/servers/<id>/status/agent`, held by the agent's lease: present means online."""

    keep_defaults = True
    max_bytes = MAX_STATUS_BYTES

    hostname: Annotated[str, _capped(MAX_HOSTNAME_BYTES)]
    agent_version: Annotated[str, _capped(MAX_AGENT_VERSION_BYTES)]
    started_at: dt.datetime
    heartbeat: dt.datetime
    """When the agent last (re)established its lease and wrote this key."""
    lease_ttl: Annotated[int, Field(ge=1, le=MAX_LEASE_TTL), NotBool] | None = None
    message: Message = ""
    drain: DrainPhase | None = None
    """Extension: set while the server document says `drained` (None: not drained)."""
    api_address: Annotated[str, Field(max_length=300)] | None = None
    """`host:port` where the agent serves its instances' logs over HTTPS (None: it serves none)."""
    api_cert_sha256: Annotated[str, Field(pattern="^[0-9a-f]{64}$")] | None = None
    """SHA-256 (hex) of the agent's self-made certificate (DER): readers pin it (DESIGN section 3)."""


class Listing(Document):
    """`<prefix>/services/<service>/servers/<id>` (`keys.listing`): empty; the key is the information.

    Written by the agent of server `<id>` while its document lists an instance of `<service>`
    (not on its lease: an offline server still lists what it lists). Read only for its key.
    """


class InstanceState(Document):
    """What an agent reports about an instance, without timestamps: the part compared for changes."""

    model_config = ConfigDict(frozen=True)
    keep_defaults = True

    phase: Phase
    version: Segment | None = None
    previous_version: Segment | None = None
    pid: Annotated[int, Field(ge=1, le=MAX_PID), NotBool] | None = None
    restarts: Annotated[int, Field(ge=0, le=MAX_RESTARTS), NotBool] = 0
    last_exit_code: Annotated[int, Field(ge=-MAX_EXIT_CODE, le=MAX_EXIT_CODE), NotBool] | None = None
    message: Message = ""
    restart_token: Annotated[str, Field(max_length=MAX_RESTART_TOKEN)] | None = None
    """Extension: the restart token the running process was started with (the controller waits for it)."""


MAX_PHASE_HISTORY = 10
"""Phase changes an instance status keeps (the newest last), for `discoverd describe`."""


class PhaseChange(Document):
    """One entry of an instance status's history: the phase entered, when, and on which version."""

    phase: Phase
    at: dt.datetime
    version: Segment | None = None


class InstanceStatus(InstanceState):
    """`<prefix>/servers/<id>/status/instances/<service>/<id>`, held by the agent's lease."""

    max_bytes = MAX_STATUS_BYTES

    since: dt.datetime
    """When the instance entered its current phase."""
    updated_at: dt.datetime
    history: Annotated[list[PhaseChange], Field(max_length=MAX_PHASE_HISTORY)] = Field(default_factory=list)
    """The last phase changes seen by the agent since it started, oldest first (the current phase last)."""


_MODELS: dict[keys.Kind, type[Document]] = {
    keys.Kind.SERVER: Server,
    keys.Kind.VERSION: Version,
    keys.Kind.INSTANCE: Instance,
    keys.Kind.AGENT_STATUS: AgentStatus,
    keys.Kind.INSTANCE_STATUS: InstanceStatus,
}

D = TypeVar("D", bound=Document)


def model_for(kind: keys.Kind) -> type[Document]:
    if kind in (keys.Kind.ROLLOUT, keys.Kind.ROLLOUT_STATUS):
        from discoverd.schema import rollouts  # builds on this module, so imported here (section 2b)

        return rollouts.RolloutConfig if kind is keys.Kind.ROLLOUT else rollouts.RolloutStatus
    return _MODELS[kind]


def _field_path(loc: tuple[int | str, ...]) -> str:
    if loc[-2:-1] and loc[-1] == "[key]":  # a bad mapping key: the reason names it, the path is the mapping
        loc = loc[:-2]
    return ".".join(str(part) for part in loc)


def validation_error(key: str, error: pydantic.ValidationError) -> InvalidDocument:
    """A pydantic error as an InvalidDocument naming key and field: the first problem, and all in `problems`."""
    problems = [
        (_field_path(e["loc"]), e["msg"].removeprefix("Value error, "))
        for e in error.errors(include_url=False, include_input=False)
    ]
    (field, reason), *more = problems
    return InvalidDocument(key, field, reason, more)


def validate(model: type[D], key: str, data: Any) -> D:
    """`model.model_validate(data)`, with errors as InvalidDocument naming `key`."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as error:
        raise validation_error(key, error) from None


def parse(model: type[D], key: str, raw: bytes) -> D:
    """Bytes from etcd to a model; InvalidDocument (and nothing else) if they are not JSON within
    the caps of `untrusted` or do not validate."""
    if len(raw) > model.max_bytes:
        raise InvalidDocument(key, "", f"the value is {len(raw)} bytes, over the limit of {model.max_bytes} bytes")
    data = untrusted.load_json(key, raw)
    if not isinstance(data, dict):
        raise InvalidDocument(key, "", f"must be a JSON object, not {type(data).__name__}")
    return validate(model, key, data)


def parse_at(key: keys.Key, key_str: str, raw: bytes) -> Document:
    """Parse the document stored at a parsed key, checking its `name` agrees with the key."""
    doc = parse(model_for(key.kind), key_str, raw)
    if isinstance(doc, Version | Instance) and doc.name != key.service:
        raise InvalidDocument(key_str, "name", f"{doc.name!r} does not match the service {key.service!r} in the key")
    name = getattr(doc, "name", None)
    if key.kind is keys.Kind.ROLLOUT and name != key.service:
        raise InvalidDocument(key_str, "name", f"{name!r} does not match the service {key.service!r} in the key")
    return doc


def dump(doc: Document) -> dict[str, Any]:
    """The document as stored in etcd: snake_case, only the fields that were set, unknown ones kept."""
    data = doc.model_dump(mode="json", exclude_unset=not doc.keep_defaults, by_alias=False)
    if "name" in data:  # the seed writes the name first
        data = {"name": data.pop("name"), **data}
    return data


def dumps(doc: Document) -> bytes:
    """Compact JSON bytes for etcd, field order as declared (what Go's encoding/json writes)."""
    return json.dumps(dump(doc), separators=(",", ":"), ensure_ascii=False).encode()
