"""Options of the small synthetic world the synth tests generate (and regenerate to compare)."""

from __future__ import annotations

SMALL = {"extent_m": 300.0, "pairs": 12, "origin": (47.37, 8.54)}
