"""`discoverd dashboard`: a local web page of the fleet and its rollouts, live (docs/operating.md).

etcd -> store.watch (one watch on the prefix) -> feed.Feed (every entry, kept current)
     -> views (pure: entries -> one page's JSON) -> server (server-sent events) -> static/app.js (DOM)
button -> server (token, Origin, read-only checks) -> store.rollout_requests -> etcd
"""
