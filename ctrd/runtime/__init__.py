"""Tasks: the runtime v2 manager (bundles, shim start protocol, ttrpc clients to shims) on the
daemon side, and ctrd's own shim (:mod:`ctrd.runtime.shim`).

Kept import-free: the shim imports this package and must stay lean.
"""
