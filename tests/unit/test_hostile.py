"""Hostile keys and values: decoding yields a valid model or InvalidDocument naming key and field, nothing else.

DESIGN section 1: every key and value is untrusted input. One table per rule,
then hypothesis on arbitrary bytes, JSON and keys.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from discoverd.errors import InvalidDocument
from discoverd.schema import documents, keys, manifests, rollouts, untrusted
from discoverd.store import typed

P = "/discoverd"
VERSION_KEY = "/discoverd/services/web/versions/1.0/config/details"
INSTANCE_KEY = "/discoverd/services/web/instances/i1/config/details"
SERVER_KEY = "/discoverd/servers/node-1/config/details"
STATUS_KEY = "/discoverd/servers/node-1/status/instances/web/i1"
AGENT_KEY = "/discoverd/servers/node-1/status/agent"
STATUS = {"phase": "Running", "since": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}
AGENT = {"hostname": "h", "agent_version": "1", "started_at": "2026-01-01T00:00:00Z", "heartbeat": "2026-01-01T00:00Z"}


def nested(depth: int) -> bytes:
    """A Version document whose unknown field nests `depth` levels in all (the document itself is one)."""
    return b'{"name":"web","x":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def version(**fields: Any) -> bytes:
    return json.dumps({"name": "web", **fields}).encode()


def run(**script: Any) -> bytes:
    return version(run_script={"command": "./web", **script})


def refuse(raw: bytes, model: type[documents.Document] = documents.Version, key: str = VERSION_KEY) -> InvalidDocument:
    with pytest.raises(InvalidDocument) as caught:
        documents.parse(model, key, raw)
    return caught.value


# caps on the raw value


@pytest.mark.parametrize(
    ("raw", "field", "reason"),
    [
        (b"[" * 5000, "", "deeper than 32 levels"),
        (b"{" * 100_000, "", "deeper than 32 levels"),
        (nested(33), "", "deeper than 32 levels"),
        (b'{"name":"web","x":"' + b"[" * 5000 + b'"}', None, None),  # brackets in a string are text
        (nested(32), None, None),
        (b'{"name":"web","x":"' + b"a" * untrusted.MAX_VALUE_BYTES + b'"}', "", "over the limit of 1048576 bytes"),
        (b'{"name":"\xff"}', "", "not valid UTF-8"),
        (b'\xff\xfe{\x00"\x00}\x00', "", "not valid UTF-8"),  # json.loads would guess UTF-16 here
        (b'{"name":"\\ud800"}', "name", "lone surrogate (\\ud800)"),
        (b'{"name":"web","run_script":{"argv":["\\udfff"]}}', "run_script.argv.0", "lone surrogate"),
        (b'{"name":"web","later":{"deep":["\\udc80"]}}', "later.deep.0", "lone surrogate"),
        (b'{"name":"web","\\ud800":1}', "", "a key with a lone surrogate"),
        (b'{"name":"web\\ud83d\\ude00"}', None, None),  # a surrogate pair is one character, kept as text
        (b'{"name":"web","stop_timeout":NaN}', "", "NaN is not a number JSON allows"),
        (b'{"name":"web","stop_timeout":Infinity}', "", "Infinity is not a number JSON allows"),
        (b'{"name":"web","stop_timeout":-Infinity}', "", "-Infinity is not a number JSON allows"),
        (b'{"name":"web","stop_timeout":1e999}', "stop_timeout", "inf is not a number JSON allows"),
        (b'{"name":"web","later":[-1e999]}', "later.0", "-inf is not a number JSON allows"),
        (b'{"name":"web","later":' + b"9" * 5000 + b"}", "", "not valid JSON"),
    ],
)
def test_values_over_the_caps_are_invalid_documents(raw: bytes, field: str | None, reason: str | None) -> None:
    if reason is None:
        assert documents.parse(documents.Version, VERSION_KEY, raw).name.startswith("web")
        return
    error = refuse(raw)
    assert error.key == VERSION_KEY
    assert error.field == field
    assert reason in error.reason


def test_a_value_exactly_at_the_size_cap_is_accepted() -> None:
    head, tail = b'{"name":"web","x":"', b'"}'
    raw = head + b"a" * (untrusted.MAX_VALUE_BYTES - len(head) - len(tail)) + tail
    assert len(raw) == untrusted.MAX_VALUE_BYTES
    assert documents.parse(documents.Version, VERSION_KEY, raw).name == "web"


# rules on fields


@pytest.mark.parametrize(
    ("raw", "field", "reason"),
    [
        (run(argv=["-c", "a\x00b"]), "run_script.argv.1", "NUL"),
        (run(command="./w\x00eb"), "run_script.command", "NUL"),
        (run(env={"A": "x\x00"}), "run_script.env.A", "NUL"),
        (run(env={"": "x"}), "run_script.env", "must not be empty"),
        (run(env={"A=B": "x"}), "run_script.env", "must not contain '='"),
        (run(env={"A\x00": "x"}), "run_script.env", "NUL"),
        (run(env={"DISCOVERD_SERVER_ID": "other"}), "run_script.env", "reserved"),
        (run(env={"DISCOVERD_RUN_TAG": "x"}), "run_script.env", "reserved"),
        (version(install_script={"command": "i", "env": {"DISCOVERD_X": "1"}}), "install_script.env", "reserved"),
        (version(health_check={"command": "c", "argv": ["\x00"]}), "health_check.argv.0", "NUL"),
        (run(argv=["a" * (documents.MAX_ARG_BYTES + 1)]), "run_script.argv.0", "at most 131071 bytes"),
        (run(env={"A": "a" * documents.MAX_ARG_BYTES}), "run_script.env", "at most 131071 bytes"),
        (version(name="we\x01b"), "name", "control characters"),
        (version(name="we\x85b"), "name", "control characters"),
        (version(name="we\x7fb"), "name", "control characters"),
        (b'{"service_instances":[{"name":"web","id":"i\\u0000"}]}', "service_instances.0.id", "control characters"),
    ],
)
def test_strings_that_would_break_a_process_or_a_path_are_refused(raw: bytes, field: str, reason: str) -> None:
    model = documents.Server if raw.startswith(b'{"service_instances"') else documents.Version
    error = refuse(raw, model)
    assert (error.key, error.field) == (VERSION_KEY, field)
    assert reason in error.reason


def test_env_names_outside_the_agents_own_are_accepted() -> None:
    doc = documents.parse(documents.Version, VERSION_KEY, run(env={"discoverd_x": "1", "X_DISCOVERD_Y": "2"}))
    assert doc.run_script.env == {"discoverd_x": "1", "X_DISCOVERD_Y": "2"}


@pytest.mark.parametrize(
    ("raw", "model", "field", "reason"),
    [
        (version(health_check={"command": "c", "interval": 0}), documents.Version, "health_check.interval", "0.2"),
        (version(health_check={"command": "c", "interval": 1e-9}), documents.Version, "health_check.interval", "0.2"),
        (version(health_check={"command": "c", "interval": 1e9}), documents.Version, "health_check.interval", "86400"),
        (version(health_check={"failure_threshold": 0}), documents.Version, "health_check.failure_threshold", "1"),
        (
            version(health_check={"failure_threshold": 10**9}),
            documents.Version,
            "health_check.failure_threshold",
            "1000",
        ),
        (run(timeout=-1), documents.Version, "run_script.timeout", "greater than or equal to 0"),
        (run(timeout=10**12), documents.Version, "run_script.timeout", "604800"),
        (run(timeout=10**30), documents.Version, "run_script.timeout", ""),
        (version(min_healthy_seconds=1e12), documents.Version, "min_healthy_seconds", "86400"),
        (version(stop_timeout=1e12), documents.Version, "stop_timeout", "86400"),
        (version(stop_timeout=-1), documents.Version, "stop_timeout", "greater than or equal to 0"),
        (json.dumps({**STATUS, "pid": 0}).encode(), documents.InstanceStatus, "pid", "greater than or equal to 1"),
        (json.dumps({**STATUS, "pid": 2**40}).encode(), documents.InstanceStatus, "pid", str(documents.MAX_PID)),
        (json.dumps({**STATUS, "restarts": -1}).encode(), documents.InstanceStatus, "restarts", "0"),
        (json.dumps({**STATUS, "last_exit_code": 2**64}).encode(), documents.InstanceStatus, "last_exit_code", "255"),
        (json.dumps({**AGENT, "lease_ttl": 0}).encode(), documents.AgentStatus, "lease_ttl", "1"),
        (json.dumps({**AGENT, "lease_ttl": 10**20}).encode(), documents.AgentStatus, "lease_ttl", "9000000000"),
    ],
)
def test_numbers_out_of_their_named_bounds_are_refused(
    raw: bytes, model: type[documents.Document], field: str, reason: str
) -> None:
    error = refuse(raw, model, STATUS_KEY)
    assert (error.key, error.field) == (STATUS_KEY, field)
    assert reason in error.reason


@pytest.mark.parametrize(
    ("raw", "model", "field"),
    [
        (run(timeout=True), documents.Version, "run_script.timeout"),
        (version(min_healthy_seconds=False), documents.Version, "min_healthy_seconds"),
        (version(health_check={"command": "c", "interval": True}), documents.Version, "health_check.interval"),
        (json.dumps({**STATUS, "restarts": True}).encode(), documents.InstanceStatus, "restarts"),
        (
            json.dumps({"name": "web", "to_version": "2.0", "min_healthy_seconds": True}).encode(),
            rollouts.RolloutConfig,
            "min_healthy_seconds",
        ),
    ],
)
def test_true_or_false_is_not_a_number(raw: bytes, model: type[documents.Document], field: str) -> None:
    """pydantic reads true as 1 unless told not to: `"timeout": true` is a mistake, not a 1 s timeout."""
    error = refuse(raw, model, STATUS_KEY)
    assert (error.field, error.reason) == (field, "must be a number, not true or false")


def test_numbers_at_their_bounds_are_accepted() -> None:
    doc = documents.parse(
        documents.Version,
        VERSION_KEY,
        version(
            run_script={"command": "w", "timeout": documents.MAX_STEP_TIMEOUT},
            health_check={
                "command": "c",
                "interval": documents.MIN_HEALTH_INTERVAL,
                "failure_threshold": documents.MAX_FAILURE_THRESHOLD,
            },
            min_healthy_seconds=documents.MAX_MIN_HEALTHY_SECONDS,
            stop_timeout=documents.MAX_STOP_TIMEOUT,
        ),
    )
    assert doc.run_script.timeout_seconds == documents.MAX_STEP_TIMEOUT
    assert doc.health_check is not None and doc.health_check.interval == documents.MIN_HEALTH_INTERVAL
    status = documents.parse(
        documents.InstanceStatus,
        STATUS_KEY,
        json.dumps({**STATUS, "pid": documents.MAX_PID, "last_exit_code": -9}).encode(),
    )
    assert status.pid == documents.MAX_PID and status.last_exit_code == -9


def test_non_finite_numbers_built_in_python_are_refused_too() -> None:
    with pytest.raises(InvalidDocument) as caught:
        documents.validate(documents.Version, VERSION_KEY, {"name": "web", "stop_timeout": math.inf})
    assert caught.value.field == "stop_timeout" and "finite" in caught.value.reason


# every problem, and errors that can always be printed


def test_every_problem_is_kept_one_line_each_with_its_field() -> None:
    raw = version(run_script={"argv": ["\x00"], "env": {"DISCOVERD_X": "1"}}, stop_timeout=-1)
    error = refuse(raw)
    assert [field for field, _ in error.problems] == ["run_script.argv.0", "run_script.env", "stop_timeout"]
    assert error.lines() == [
        f"{VERSION_KEY}: field 'run_script.argv.0': must not contain NUL (\\0): the kernel would cut it there",
        f"{VERSION_KEY}: field 'run_script.env': environment variable name 'DISCOVERD_X' is reserved:"
        " the agent sets DISCOVERD_* itself",
        f"{VERSION_KEY}: field 'stop_timeout': Input should be greater than or equal to 0",
    ]
    assert str(error) == error.lines()[0] + " (and 2 more problems)"


def test_the_three_argument_form_still_works() -> None:
    error = InvalidDocument("/k", "f", "bad")
    assert (error.key, error.field, error.reason, error.problems) == ("/k", "f", "bad", (("f", "bad"),))
    assert str(error) == "/k: field 'f': bad" and error.lines() == [str(error)]


def test_errors_escape_what_cannot_be_printed() -> None:
    key = b"/discoverd/servers/n\xff\n/config/details".decode("utf-8", "surrogateescape")
    error = InvalidDocument(key, "na\udcffme", "bad \ud800")
    assert error.key == "/discoverd/servers/n\\xff\\x0a/config/details"
    assert str(error) == "/discoverd/servers/n\\xff\\x0a/config/details: field 'na\\xffme': bad \\ud800"
    str(error).encode("utf-8")  # loggable, and storable in a status document


@pytest.mark.parametrize(
    "raw",
    [
        version(stop_signal="x" * 500_000),
        run(env={"A=" * 100_000: "x"}),
        json.dumps({"service_instances": [{"name": "web", "id": "a" * 500_000}]}).encode(),
    ],
)
def test_error_messages_stay_short_whatever_the_value(raw: bytes) -> None:
    model = documents.Server if b"service_instances" in raw else documents.Version
    error = refuse(raw, model)
    assert len(str(error)) < 400, str(error)


def test_a_huge_key_is_named_cut_short() -> None:
    key = "/discoverd/servers/" + "n" * 500_000 + "/config/details"
    with pytest.raises(InvalidDocument) as caught:
        keys.parse(P, key)
    assert caught.value.field == "server" and "at most 253 bytes" in caught.value.reason
    assert len(str(caught.value)) < 2 * 1024


# keys


@pytest.mark.parametrize(
    ("raw_key", "field"),
    [
        (b"/discoverd/servers/node\xff/config/details", "server"),
        (b"/discoverd/services/w\xc3/versions/1.0/config/details", "service"),
        (b"/discoverd/services/web/versions/\xed\xa0\x80/config/details", "version"),  # an encoded surrogate
        (b"/discoverd/services/web/instances/\x80/config/details", "instance"),
        (b"/discoverd/servers/n/status/instances/web/i\xfe", "instance"),
        (b"/discoverd/servers/n/status/agent\xff", ""),
        (b"/discoverd/elsewhere/\xff", ""),
    ],
)
def test_keys_that_are_not_utf8_are_invalid_naming_the_key_printably(raw_key: bytes, field: str) -> None:
    key = raw_key.decode("utf-8", "surrogateescape")
    with pytest.raises(InvalidDocument) as caught:
        keys.parse(P, key)
    assert caught.value.field == field
    assert "UTF-8" in caught.value.reason
    assert caught.value.key == raw_key.decode("utf-8", "backslashreplace")
    str(caught.value).encode("utf-8")


def test_keys_outside_the_prefix_stay_ignored_whatever_their_bytes() -> None:
    assert keys.parse(P, b"/other/\xff".decode("utf-8", "surrogateescape")) is None


@pytest.mark.parametrize("segment", ["a\x01", "a\x85", "a\x7f", "\udcff", "a\ud800"])
def test_keys_cannot_be_built_from_bad_names(segment: str) -> None:
    with pytest.raises(ValueError):
        keys.server_config(P, segment)


# YAML (`discoverd apply/validate`): the same caps


HEAD = "apiVersion: discoverd.io/v1alpha1\nkind: ServiceVersion\n"


def yaml_version(spec: str) -> str:
    return HEAD + "spec: {service: web, version: '1.0', " + spec + "}\n"


@pytest.mark.parametrize(
    ("text", "where", "field", "reason"),
    [
        (HEAD + "spec: " + "[" * 5000 + "]" * 5000 + "\n", "<f>: line 3", "", "deeper than 32 levels"),
        (HEAD + "spec:\n" + "".join("  " * i + f"k{i}:\n" for i in range(40)), "<f>: line", "", "deeper than 32"),
        (yaml_version("stopTimeout: .nan"), "document 1", "spec.stopTimeout", "nan is not a number JSON allows"),
        (yaml_version("stopTimeout: .inf"), "document 1", "spec.stopTimeout", "inf is not a number"),
        (yaml_version('runScript: {command: "\\ud800"}'), "document 1", "spec.runScript.command", "lone surrogate"),
        (yaml_version('runScript: {command: x, argv: ["\\0"]}'), "document 1", "spec.runScript.argv.0", "NUL"),
        (
            yaml_version("runScript: {command: x, env: {DISCOVERD_SERVICE: x}}"),
            "document 1",
            "spec.runScript.env",
            "reserved",
        ),
        (
            yaml_version('runScript: {command: x, env: {MY_VAR: "\\0"}}'),
            "document 1",
            "spec.runScript.env.MY_VAR",
            "NUL",
        ),
        (yaml_version("healthCheck: {command: c, interval: 0}"), "document 1", "spec.healthCheck.interval", "0.2"),
        (yaml_version("runScript: {command: x, argv: [2026-01-01]}"), "document 1", "spec.runScript.argv.0", "a date"),
        (yaml_version("stopTimeout: 2026-02-30"), "<f>", "", "not valid YAML"),
        (yaml_version("stopTimeout: " + "9" * 5000), "<f>", "", "not valid YAML"),
        (yaml_version("later: {1: x}"), "document 1", "spec.later", "not a string"),
        (
            HEAD
            + "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8))
            + "spec: {service: web, version: '1', later: *i}\n",
            "document 1",
            "",
            "more than 1048576 values",
        ),
        (
            yaml_version("runScript: {command: x, argv: [" + ", ".join(["a" * 120_000] * 10) + "]}"),
            "document 1",
            "spec",
            "over the limit of 1048576",
        ),
    ],
)
def test_yaml_documents_get_the_same_caps(text: str, where: str, field: str, reason: str) -> None:
    valid, errors = manifests.load(text, "<f>")
    assert valid == [] and len(errors) == 1
    assert where in errors[0].key
    assert errors[0].field == field
    assert reason in errors[0].reason


def test_yaml_problems_are_all_listed_with_their_camel_case_fields() -> None:
    text = yaml_version('runScript: {argv: ["\\0"], env: {DISCOVERD_X: "1"}}, stopTimeout: -1, stopSignal: NOPE')
    _, [error] = manifests.load(text, "<f>")
    assert [field for field, _ in error.problems] == [
        "spec.runScript.argv.0",
        "spec.runScript.env",
        "spec.stopSignal",
        "spec.stopTimeout",
    ]


# hypothesis: nothing but a valid model or InvalidDocument


KINDS = {
    VERSION_KEY: documents.Version,
    INSTANCE_KEY: documents.Instance,
    SERVER_KEY: documents.Server,
    STATUS_KEY: documents.InstanceStatus,
    AGENT_KEY: documents.AgentStatus,
}

# Text including lone surrogates, NUL, controls: what a hostile JSON writer can put in a string.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
numbers = st.integers() | st.floats() | st.sampled_from([0, 0.01, 1e300, -1, 2**63, 10**40, math.nan, math.inf])
scalars = st.none() | st.booleans() | numbers | any_text


def json_values(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
        max_leaves=20,
    )


deep_values = st.integers(0, 80).flatmap(lambda n: json_values(scalars).map(lambda v: _wrap(v, n)))


def _wrap(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


script_fields = st.sampled_from(["command", "argv", "timeout", "env", "interval", "failure_threshold"])
scripts = st.dictionaries(script_fields, json_values(scalars) | st.dictionaries(any_text, any_text, max_size=3))
document_fields = st.sampled_from(
    [
        "name",
        "service_version",
        "download_script",
        "install",
        "run_script",
        "runScript",
        "health_check",
        "min_healthy_seconds",
        "stop_signal",
        "stop_timeout",
        "service_instances",
        "phase",
        "pid",
        "restarts",
        "last_exit_code",
        "since",
        "updated_at",
        "hostname",
        "agent_version",
        "started_at",
        "heartbeat",
        "lease_ttl",
        "extra",
    ]
)
documents_ = st.dictionaries(
    document_fields,
    scalars
    | scripts
    | deep_values
    | st.lists(st.dictionaries(st.sampled_from(["name", "id"]), any_text | scalars), max_size=3),
    max_size=8,
)


def encode(value: Any, ascii_only: bool) -> bytes:
    """JSON bytes as a careless writer would produce them: NaN allowed, surrogates escaped or raw."""
    return json.dumps(value, ensure_ascii=ascii_only, allow_nan=True).encode("utf-8", "surrogatepass")


def check_decoding(key: str, raw: bytes) -> None:
    parsed = keys.parse(P, key)
    assert parsed is not None
    try:
        doc = documents.parse_at(parsed, key, raw)
    except InvalidDocument as error:
        assert error.key == key and error.reason
        assert "\n" not in str(error)
        str(error).encode("utf-8")  # can be logged and written into a status document
        return
    # A valid model is safe to act on: it dumps to JSON that reads back as the same model.
    assert documents.parse_at(parsed, key, documents.dumps(doc)) == doc


@given(st.sampled_from(sorted(KINDS)), st.binary(max_size=300))
def test_arbitrary_bytes_decode_to_a_model_or_an_invalid_document(key: str, raw: bytes) -> None:
    check_decoding(key, raw)


@given(st.sampled_from(sorted(KINDS)), json_values(scalars) | deep_values, st.booleans())
def test_arbitrary_json_decodes_to_a_model_or_an_invalid_document(key: str, value: Any, ascii_only: bool) -> None:
    check_decoding(key, encode(value, ascii_only))


@given(st.sampled_from(sorted(KINDS)), documents_, st.booleans())
def test_document_shaped_json_decodes_to_a_model_or_an_invalid_document(
    key: str, value: dict[str, Any], ascii_only: bool
) -> None:
    if key in (VERSION_KEY, INSTANCE_KEY):
        value.setdefault("name", "web")
    check_decoding(key, encode(value, ascii_only))


@given(st.sampled_from(sorted(KINDS)), documents_)
def test_valid_documents_hold_nothing_a_process_or_path_cannot_take(key: str, value: dict[str, Any]) -> None:
    parsed = keys.parse(P, key)
    assert parsed is not None
    try:
        doc = documents.parse_at(parsed, key, encode(value, True))
    except InvalidDocument:
        return
    if isinstance(doc, documents.Version):
        for script in (doc.download_script, doc.install_script, doc.run_script, doc.health_check):
            if script is None:
                continue
            for text in (script.command, *script.argv, *(script.env or {}).values()):
                assert "\0" not in text and text.encode()
            for name in script.env or {}:
                assert name and "=" not in name and "\0" not in name and not name.startswith("DISCOVERD_")
        assert doc.stop_timeout <= documents.MAX_STOP_TIMEOUT
    if isinstance(doc, documents.Server):
        for ref in doc.service_instances:
            assert keys.segment_error(ref.name) is None and keys.segment_error(ref.id) is None


segment_text = st.text(st.characters(codec=None, exclude_categories=()), min_size=0, max_size=12)
segment_bytes = st.binary(max_size=12).map(lambda b: b.decode("utf-8", "surrogateescape"))
segments = segment_text | segment_bytes
shaped_keys = st.one_of(
    st.builds("/discoverd/servers/{}/config/details".format, segments),
    st.builds("/discoverd/services/{}/versions/{}/config/details".format, segments, segments),
    st.builds("/discoverd/services/{}/instances/{}/config/details".format, segments, segments),
    st.builds("/discoverd/servers/{}/status/agent".format, segments),
    st.builds("/discoverd/servers/{}/status/instances/{}/{}".format, segments, segments, segments),
    st.builds("/discoverd/{}".format, segments),
)
any_keys = shaped_keys | segments | st.binary(max_size=60).map(lambda b: b.decode("utf-8", "surrogateescape"))


@given(any_keys)
def test_arbitrary_keys_parse_to_a_key_none_or_an_invalid_document(key: str) -> None:
    try:
        parsed = keys.parse(P, key)
    except InvalidDocument as error:
        str(error).encode("utf-8")
        assert "\n" not in str(error)
        return
    if parsed is not None:
        key.encode("utf-8")  # only UTF-8 keys are ever parsed
        for name in (parsed.server, parsed.service, parsed.version, parsed.instance):
            assert name == "" or keys.segment_error(name) is None
        assert parsed.build(P) == key


@given(any_keys, st.binary(max_size=100) | json_values(scalars).map(lambda v: encode(v, False)))
def test_the_store_decodes_any_key_and_value_into_an_entry(key: str, raw: bytes) -> None:
    entry = typed.decode(P, key, raw, mod_revision=1)
    assert (entry.document is None) or (entry.error is None)
    if entry.error is not None:
        str(entry.error).encode("utf-8")


yaml_leaves = st.none() | st.booleans() | st.integers() | st.floats() | any_text


@given(json_values(yaml_leaves) | deep_values, st.sampled_from(["ServiceVersion", "ServiceInstance", "Server"]))
def test_arbitrary_yaml_specs_load_as_manifests_or_errors(spec: Any, kind: str) -> None:
    try:
        text = yaml.safe_dump({"apiVersion": "discoverd.io/v1alpha1", "kind": kind, "spec": spec}, allow_unicode=False)
    except yaml.YAMLError:
        return  # not representable in YAML (a surrogate PyYAML will not write)
    valid, errors = manifests.load(text, "<f>")
    assert len(valid) + len(errors) == 1
    for error in errors:
        str(error).encode("utf-8")


@given(st.text(st.characters(codec=None, exclude_categories=()), max_size=200))
def test_arbitrary_yaml_text_loads_as_manifests_or_errors(text: str) -> None:
    valid, errors = manifests.load(text, "<f>")
    assert valid or errors
