"""scope.spans: exactly the keys an agent reads and watches, derived from its instances."""

from __future__ import annotations

from discoverd.agent import model, scope

P = "/d"


def test_an_agent_with_no_instances_watches_its_server_document_alone() -> None:
    assert scope.spans(P, "n1", ()) == {scope.Span("/d/servers/n1/config/details")}


def test_one_versions_prefix_per_service_and_one_key_per_instance() -> None:
    refs = [model.Ref("web", "a"), model.Ref("web", "b"), model.Ref("db", "x")]
    assert scope.spans(P, "n1", refs) == {
        scope.Span("/d/servers/n1/config/details"),
        scope.Span("/d/services/web/versions/", prefix=True),
        scope.Span("/d/services/db/versions/", prefix=True),
        scope.Span("/d/services/web/instances/a/config/details"),
        scope.Span("/d/services/web/instances/b/config/details"),
        scope.Span("/d/services/db/instances/x/config/details"),
    }


def test_a_versions_prefix_covers_its_service_only_and_never_status_or_other_servers() -> None:
    web = scope.Span("/d/services/web/versions/", prefix=True)
    assert web.covers("/d/services/web/versions/2.0/config/details")
    assert not web.covers("/d/services/web2/versions/1.0/config/details")
    assert not web.covers("/d/services/web/instances/a/config/details")
    server = scope.Span("/d/servers/n1/config/details")
    assert not server.covers("/d/servers/n1/status/agent")
    assert not server.covers("/d/servers/n10/config/details")
    assert web.range() == (b"/d/services/web/versions/", b"/d/services/web/versions0")
    assert server.range() == (b"/d/servers/n1/config/details", b"")
