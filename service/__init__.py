"""The localisation service: a FastAPI app that ranks satellite tiles for a ground photo.

`service.main:app` is the ASGI app; `cvm serve` runs it and `cvm localize` runs the same pipeline
from the command line.
"""
