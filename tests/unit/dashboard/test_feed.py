"""`dashboard.feed`: which watch events change what the pages show (no etcd: events as the store decodes them)."""

from __future__ import annotations

import json
from typing import Any

from discoverd.dashboard import feed
from discoverd.store import watch
from discoverd.store.typed import decode

P = "/p"


def put(key: str, doc: Any, revision: int) -> watch.Put:
    return watch.Put(decode(P, f"{P}/{key}", json.dumps(doc).encode(), revision))


def test_only_keys_a_page_shows_wake_the_pages() -> None:
    f = feed.Feed(store=None)  # type: ignore[arg-type]  # _apply reads no etcd
    version = put("services/web/versions/1.0/config/details", {"name": "web"}, 2)
    assert f._apply([version]) is True
    # A log grant and the controller's election key come and go often; no page shows them.
    grant = put("grants/node-1/" + "a" * 64, {"service": "web", "instance": "a"}, 3)
    leader = put("controller/leader", {"holder": "x"}, 4)
    assert f._apply([grant, leader]) is False
    assert list(f.entries) == [f"{P}/services/web/versions/1.0/config/details"]
    assert f.revision == 4
    # An invalid document is shown (named with its error), and its deletion changes the page again.
    bad = watch.Put(decode(P, f"{P}/services/web/instances/a/config/details", b"{", 5))
    assert f._apply([bad]) is True
    assert f._apply([watch.Delete(bad.entry.key, 6)]) is True
    assert f._apply([watch.Delete(f"{P}/controller/leader", 7)]) is False
