"""The rollout controller (DESIGN section 2b): one of any number of copies acts, elected through etcd.

    etcd -> store -> world (entries -> plan inputs) -> plan (pure) -> loop (one transaction per step) -> etcd

No agent, operator or Kopf import: `discoverd controller`, `discoverd up` and
`discoverd operator` all run the same `loop.run`.
"""
