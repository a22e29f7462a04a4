"""The sweep over (type, layer, rho), its prefix cache, the resumable store, composition, the Ray backend."""
