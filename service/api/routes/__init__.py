"""Routers: localize, tiles, health, metrics and the map page."""
