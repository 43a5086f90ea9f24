"""discoverd: deploy and upgrade services on servers from configuration in etcd."""

__all__ = ["__version__"]

__version__ = "0.1.0"
