"""Measuring tools: memory estimates on fake tensors (``memory_estimate``) and the method benchmark (``benchmark``),
which runs each measurement as ``python -m snella_seg.analysis.benchmark --worker``."""
