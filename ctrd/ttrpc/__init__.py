"""ttrpc: containerd's lightweight RPC over unix sockets, used between the daemon and shims.

``framing`` is sans-IO (bytes in, frames out) so both the asyncio daemon and a lean,
asyncio-free shim can use it; ``server`` and ``client`` bind it to asyncio.
"""
