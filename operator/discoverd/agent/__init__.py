"""The node agent: makes this server run what etcd configures (DESIGN section 3).

Flow: `desired` (etcd entries -> targets) -> `plan` (pure decisions over each
instance's `model.InstanceRecord`) -> `executor` -> `supervisor` (per instance;
`invocation` and `processes` run scripts, `observe` identifies processes, `layout` is the state
directory and saves the states) -> `status` (etcd). `model` holds the types
and the rules; `loop` wires them together. See docs/architecture.md.
"""
