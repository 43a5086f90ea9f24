"""Pure data: etcd keys, documents, custom resources. Imports nothing of discoverd but errors."""
