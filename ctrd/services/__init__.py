"""gRPC services: thin adapters from containerd's API to the core packages."""
