"""Benchmark `cvm synth`: generate one world into a temporary directory, print pairs/s.

Usage: .venv/bin/python scripts/bench_synth.py --pairs 1000 [--extent-m 2000] [--workers 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synth import SynthOptions, synthesize  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Defaults: those of SynthOptions.
    p.add_argument("--pairs", type=int, default=SynthOptions.pairs)
    p.add_argument("--extent-m", type=float, default=SynthOptions.extent_m)
    p.add_argument("--gsd-m", type=float, default=SynthOptions.gsd_m)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", type=Path, default=None, help="write here instead of a temporary directory")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
        out = args.keep or Path(tmp) / "world"
        opts = SynthOptions(
            seed=args.seed,
            out=out,
            extent_m=args.extent_m,
            gsd_m=args.gsd_m,
            pairs=args.pairs,
            workers=args.workers,
            overwrite=True,
        )
        t0 = time.perf_counter()
        result = synthesize(opts)
        total = time.perf_counter() - t0
    t = result.timings
    print(
        f"pairs={args.pairs} extent_m={args.extent_m} gsd_m={args.gsd_m} "
        f"workers={args.workers} cpus={os.cpu_count()}"
    )
    print(
        f"world+ortho {t['world_s']:.1f} s, geotiff+sampling {t['geotiff_and_sampling_s']:.1f} s, "
        f"pairs {t['pairs_s']:.1f} s ({args.pairs / t['pairs_s']:.1f} pairs/s)"
    )
    print(f"total {total:.1f} s: {args.pairs / total:.1f} pairs/s overall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
