"""OCI distribution (registry) client: references, auth, hosts config, resolve/fetch/push.

Sans-IO parts (reference parsing, ``WWW-Authenticate`` parsing, ``hosts.toml``, URL building)
are plain functions; :mod:`ctrd.remotes.registry` is the small blocking HTTP layer over them.
"""
