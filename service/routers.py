"""Every resource router, in the order they appear in /docs."""

ROUTERS: list = []
