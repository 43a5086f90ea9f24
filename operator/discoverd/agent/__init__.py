"""The node agent: makes this server run what etcd configures (DESIGN section 3).

Flow: `desired` (etcd entries -> targets) -> `plan` (pure decisions) ->
`executor` -> `supervisor` (per instance; `steps` runs scripts, `observe`
identifies processes, `layout` is the state directory) -> `status` (etcd).
`loop` wires them together.
"""
