"""`controller.roles` and `store.auth.server_grants`: what a server's role holds, and the grant diff, as tables."""

from __future__ import annotations

import json
from typing import Any

import pytest

from discoverd.controller import roles
from discoverd.schema import keys
from discoverd.store import auth, watch
from discoverd.store.auth import Access, Grant
from discoverd.store.typed import decode

P = "/discoverd"
R, W, RW = Access.READ, Access.WRITE, Access.READWRITE


def test_a_server_role_reads_what_it_lists_and_writes_one_key_per_instance() -> None:
    grants = auth.server_grants(P, "n1", [("web", "i1"), ("web", "i2"), ("db", "d1")], [("old", "o1")])
    assert [(str(g), g.exact) for g in grants] == [
        ("read /discoverd/servers/n1/config/", False),
        ("write /discoverd/servers/n1/status/agent", True),
        ("read /discoverd/grants/n1/", False),  # the log grants its log API checks
        ("read /discoverd/services/db/versions/", False),
        ("read /discoverd/services/web/versions/", False),
        ("read /discoverd/services/db/instances/d1/config/details", True),
        ("read /discoverd/services/web/instances/i1/config/details", True),
        ("read /discoverd/services/web/instances/i2/config/details", True),
        ("write /discoverd/servers/n1/status/instances/db/d1", True),
        # still reported: writable until its agent deleted it (or its lease expired)
        ("write /discoverd/servers/n1/status/instances/old/o1", True),
        ("write /discoverd/servers/n1/status/instances/web/i1", True),
        ("write /discoverd/servers/n1/status/instances/web/i2", True),
        # the listing index a rollout start reads (read too: it is created only when missing)
        ("readwrite /discoverd/services/db/servers/n1", True),
        ("readwrite /discoverd/services/old/servers/n1", True),
        ("readwrite /discoverd/services/web/servers/n1", True),
    ]
    # An exact grant is the key alone in etcd (range_end empty); a prefix grant its whole range.
    assert grants[1].range() == (b"/discoverd/servers/n1/status/agent", b"")
    assert grants[0].range() == (b"/discoverd/servers/n1/config/", b"/discoverd/servers/n1/config0")


def test_a_server_with_nothing_listed_reads_only_its_document_and_writes_only_its_agent_key() -> None:
    assert [str(g) for g in auth.server_grants(P, "n1")] == [
        "read /discoverd/servers/n1/config/",
        "write /discoverd/servers/n1/status/agent",
        "read /discoverd/grants/n1/",
    ]


def g(key: str, access: Access = R, exact: bool = True) -> Grant:
    return Grant(key, access, exact)


def have(*grants: Grant) -> dict[tuple[bytes, bytes], Access]:
    return {x.range(): x.access for x in grants}


A, B, C = "/p/a", "/p/b", "/p/c/"
DIFF_TABLE: list[tuple[str, list[Grant], dict[tuple[bytes, bytes], Access], roles.Changes]] = [
    ("in step: nothing", [g(A), g(C, exact=False)], have(g(A), g(C, exact=False)), roles.Changes()),
    ("empty role: grant all", [g(A), g(B, W)], {}, roles.Changes(grant=(g(A), g(B, W)))),
    ("no longer wanted: revoke", [g(A)], have(g(A), g(B, W)), roles.Changes(revoke=((B.encode(), b""),))),
    ("another access: one grant replaces it", [g(A, W)], have(g(A, RW)), roles.Changes(grant=(g(A, W),))),
    (
        "a prefix is not the key: grant one, revoke the other",
        [g(C, exact=False)],
        have(g(C)),
        roles.Changes(grant=(g(C, exact=False),), revoke=((C.encode(), b""),)),
    ),
    (
        "a range someone else granted: revoked",
        [g(A)],
        {**have(g(A)), (b"/p/", b"/q"): RW},
        roles.Changes(revoke=((b"/p/", b"/q"),)),
    ),
    ("nothing wanted: revoke all", [], have(g(A), g(B)), roles.Changes(revoke=((A.encode(), b""), (B.encode(), b"")))),
]


@pytest.mark.parametrize(
    ("wanted", "held", "expected"), [row[1:] for row in DIFF_TABLE], ids=[row[0] for row in DIFF_TABLE]
)
def test_diff(wanted: list[Grant], held: dict[tuple[bytes, bytes], Access], expected: roles.Changes) -> None:
    assert roles.diff(wanted, held) == expected


def entry(key: str, value: Any) -> Any:
    return decode(P, key, json.dumps(value).encode(), 5)


SERVER = {"service_instances": [{"name": "web", "id": "i1"}]}
STATUS = {"phase": "Running", "since": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}


class _NoStore:
    prefix = P


def tracker() -> roles.Roles:
    return roles.Roles(_NoStore())  # type: ignore[arg-type]  # load/observe/wanted never touch etcd


def test_roles_follow_server_documents_and_status_keys_from_the_watch() -> None:
    r = tracker()
    r.load([entry(keys.server_config(P, "n1"), SERVER), entry(keys.instance_config(P, "web", "i1"), {})])
    wanted = r.wanted("n1")
    assert wanted is not None and g(keys.instance_config(P, "web", "i1")) in wanted
    # The instance moves off n1 while its status key still exists: reads go, the write stays.
    r.observe(
        [
            watch.Put(entry(keys.instance_status(P, "n1", "web", "i1"), STATUS)),
            watch.Put(entry(keys.server_config(P, "n1"), {"service_instances": []})),
        ]
    )
    assert [str(x) for x in r.wanted("n1") or []] == [
        f"read {P}/servers/n1/config/",
        f"write {P}/servers/n1/status/agent",
        f"read {P}/grants/n1/",
        f"write {P}/servers/n1/status/instances/web/i1",
        f"readwrite {P}/services/web/servers/n1",  # its listing, deleted with the last status key of web
    ]
    # Its agent deleted the key: the write goes too.
    r.observe([watch.Delete(keys.instance_status(P, "n1", "web", "i1"), 9)])
    assert len(r.wanted("n1") or []) == 3  # its document, its agent key, its log grants


def test_an_invalid_server_document_leaves_the_role_as_it_is() -> None:
    r = tracker()
    r.load([entry(keys.server_config(P, "n1"), {"service_instances": "nope"})])
    assert r.wanted("n1") is None
    assert r.wanted("n2") is not None  # no document: its own keys only
