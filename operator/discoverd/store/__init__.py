"""The only code that talks to etcd: connection, typed documents, watches, leases."""
