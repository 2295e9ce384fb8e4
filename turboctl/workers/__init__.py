"""RPC workers: the build identity of the handshake, the protocol turboctl speaks to a worker
itself, and ``turboctl worker`` (the patched rpc-server of the current build)."""
