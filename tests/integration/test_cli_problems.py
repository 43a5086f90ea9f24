"""`discoverd validate` and `apply` show every problem of a bad document, one line each, and refuse hostile YAML."""

from __future__ import annotations

import pytest

from discoverd.embedded_etcd import EtcdServer
from support.cli import discoverd
from support.etcd import RawEtcd

HEAD = "apiVersion: discoverd.io/v1alpha1\nkind: ServiceVersion\n"
THREE_PROBLEMS = (
    HEAD + 'spec: {service: web, version: "1.0", stopTimeout: -1,'
    ' runScript: {command: x, argv: ["a\\0b"], env: {DISCOVERD_SERVER_ID: other}}}\n'
)
WHERE = "<stdin>: document 1 (ServiceVersion)"


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: <stdin>")]


def test_validate_prints_every_problem_on_its_own_line_with_its_field() -> None:
    result = discoverd("validate", "-f", "-", input=THREE_PROBLEMS)
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        f"error: {WHERE}: field 'spec.runScript.argv.0': must not contain NUL (\\0): the kernel would cut it there",
        f"error: {WHERE}: field 'spec.runScript.env': environment variable name 'DISCOVERD_SERVER_ID' is reserved:"
        " the agent sets DISCOVERD_* itself",
        f"error: {WHERE}: field 'spec.stopTimeout': Input should be greater than or equal to 0",
    ]
    assert "more problem" not in result.stderr
    assert "1 invalid document" in result.stderr


def test_apply_prints_every_problem_and_writes_nothing(etcd_server: EtcdServer, prefix: str, raw_etcd: RawEtcd) -> None:
    env = {"DISCOVERD_ETCD_ENDPOINTS": etcd_server.endpoint, "DISCOVERD_PREFIX": prefix}
    result = discoverd("apply", "-f", "-", env=env, input=THREE_PROBLEMS)
    assert result.returncode == 1
    assert [line.split("field ")[1].split(":")[0] for line in error_lines(result.stderr)] == [
        "'spec.runScript.argv.0'",
        "'spec.runScript.env'",
        "'spec.stopTimeout'",
    ]
    assert "nothing was written" in result.stderr
    assert raw_etcd.keys(prefix + "/") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (HEAD + "spec: " + "[" * 20000 + "]" * 20000 + "\n", "deeper than 32 levels"),
        (HEAD + "spec: {service: web, version: '1', stopTimeout: .nan}\n", "'spec.stopTimeout': nan is not a number"),
        (HEAD + 'spec: {service: "web\\ud800", version: "1"}\n', "'spec.service': holds a lone surrogate"),
        (HEAD + "spec: {service: web, version: '1', stopTimeout: " + "9" * 5000 + "}\n", "not valid YAML"),
        (
            HEAD
            + "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8))
            + "spec: {service: web, version: '1', runScript: {argv: *i}}\n",
            "more than 1048576 values",
        ),
    ],
)
def test_validate_refuses_hostile_yaml_in_one_line(text: str, message: str) -> None:
    result = discoverd("validate", "-f", "-", input=text)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr and "unexpected" not in result.stderr
