"""The search stage: the sweep over (type, layer, amount) with its prefix cache, the resumable store, halving,
prescreens, composition, the job that ties them together, compression, objectives and the Ray backend. The
search function itself is `laserlm.search` (api.py)."""
