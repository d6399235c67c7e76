"""Synthetic geo-tagged cross-view world: orthophoto, panoramas, photos and a CVUSA layout.

Entry points: `synthesize(SynthOptions(...))` and the `cvm synth` command.
"""

from synth.writer import SynthOptions, SynthResult, synthesize

__all__ = ["SynthOptions", "SynthResult", "synthesize"]
