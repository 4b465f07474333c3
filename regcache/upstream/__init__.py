"""Talking to upstream registries. Knows nothing of serving (no aiohttp.web here)."""
