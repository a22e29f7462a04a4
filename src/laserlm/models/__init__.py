"""Loading MODEL (hub, folder, .gguf, demo), dense or factorized export, LowRankLinear."""
