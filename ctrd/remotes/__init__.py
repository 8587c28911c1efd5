"""OCI distribution (registry) client: references, auth, hosts config, resolve/fetch/push.

Sans-IO parts (reference parsing, ``WWW-Authenticate`` parsing, ``hosts.toml``, URL building)
and the proxy rules (:mod:`ctrd.remotes.proxy`) are plain functions; :mod:`ctrd.remotes.registry`
is the blocking client over them, on :mod:`ctrd.remotes.transport` (urllib3 connection pools);
:mod:`ctrd.remotes.credhelpers` finds credentials as the docker CLI does.
"""
