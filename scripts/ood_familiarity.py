"""Inputs unlike anything indexed, against a synthetic world, judged as the service judges them.

Answers the world's own panoramas and photos (in distribution) and real images from the shared
sample data (CVUSA panoramas, a blank, a black and a noise image; other real panoramas, real
photos, aerial images sent as ground queries) through `service.pipeline.localize_once` with the
weights' calibration, and prints per set of inputs how many are unfamiliar (familiarity score
over the threshold, `service.familiarity`), how many have a confidence below that of 90 % of the
world's correct panorama answers, and the same count and the range for the confidence the
consensus features alone give (the calibration's logistic model, no familiarity).
docs/model-card.md ("Out of distribution") has the figures.

Usage: .venv/bin/python scripts/ood_familiarity.py --world var/e16/dev-6001 --data-dir var/e16/idx/dev-6001
       [--shared ../shared/data/realpairs] [--weights W.pt] [--verbose]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli.service_eval import answer_world, open_world  # noqa: E402
from model.weights import default_weights_path  # noqa: E402
from service.localizer import Localizer  # noqa: E402
from service.pipeline import localize_once  # noqa: E402


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def input_sets(shared: Path) -> dict[str, tuple[str, dict[str, bytes]]]:
    """{set name: (kind, {input name: bytes})}; the first two are the test's own inputs
    (tests/service/test_no_confident_match.py), the others were not used to choose the design."""
    cvusa = sorted((shared / "sat2street/data/test/street").glob("*.jpg"))
    cvusa += sorted((shared / "crossnet/data/imgs").glob("ground*.jpg"))
    test = {p.name: p.read_bytes() for p in cvusa}
    test["blank"] = png(np.full((112, 616, 3), 128, np.uint8))
    test["black"] = png(np.zeros((112, 616, 3), np.uint8))
    test["noise"] = png(np.random.default_rng(0).integers(0, 256, (112, 616, 3), dtype=np.uint8))
    panoramas = [shared / "HC-Net/figure/VIGOR_exp/pano.png", shared / "OriCNN/pano_img.png"]
    panoramas += sorted((shared / "cross-view-image-synthesis/datasets/AB_AsBs/sample").glob("*.jpg"))
    photos = sorted((shared / "exif-samples/jpg/gps").glob("*.jpg"))
    aerial = sorted((shared / "crossnet/data/imgs").glob("aerial*.jpg"))
    aerial += sorted((shared / "sat2street/data/test/satellite").glob("*"))

    def read(paths: list[Path]) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in paths}

    return {
        "test inputs as panoramas": ("panorama", test),
        "test inputs as photos": ("photo", test),
        "other real panoramas": ("panorama", read(panoramas)),
        "real photos": ("photo", read(photos)),
        "aerial images as panoramas": ("panorama", read(aerial)),
        "aerial images as photos": ("photo", read(aerial)),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=Path, required=True, help="a `cvm synth` world (not a calibration world)")
    p.add_argument("--data-dir", type=Path, required=True, help="its catalogue and index (made if absent)")
    p.add_argument("--shared", type=Path, default=Path("../shared/data/realpairs"))
    p.add_argument("--weights", type=Path, default=None, help="default: the shipped weights")
    p.add_argument("--verbose", action="store_true", help="one line per input")
    args = p.parse_args()
    loc = Localizer.from_checkpoint(args.weights or default_weights_path())
    cal = loc.calibration
    if cal is None or not cal.familiarity:
        raise SystemExit("the weights have no calibration with familiarity models (cvm calibrate)")
    records = answer_world(args.world, args.data_dir, loc, ("panorama", "photo"), None)
    for kind in ("panorama", "photo"):
        rs = [r for r in records if r.kind == kind]
        print(
            f"{args.world.name} {kind}s: {len(rs)}, {sum(r.correct for r in rs)} correct, "
            f"unfamiliar {100 * np.mean([r.unfamiliar for r in rs]):.1f} %"
        )
    correct = np.array([r.confidence for r in records if r.kind == "panorama" and r.correct])
    snapshot = open_world(args.world, args.data_dir, loc)
    for name, (kind, inputs) in input_sets(args.shared).items():
        ratios, below, alone, below_alone = [], [], [], []
        for input_name, data in inputs.items():
            est = localize_once(loc, snapshot, data, 5, kind).estimate
            if est is None or est.familiarity is None:
                raise SystemExit(f"{input_name}: no estimate or no familiarity verdict")
            ratio = est.familiarity / cal.familiarity[kind].threshold
            ratios.append(ratio)
            below.append(float(np.mean(correct > est.confidence)) >= 0.9)
            p_alone = cal.confidence(est.raw, kind)
            alone.append(p_alone)
            below_alone.append(float(np.mean(correct > p_alone)) >= 0.9)
            if args.verbose:
                print(
                    f"  {kind} {input_name}: confidence {est.confidence:.3f} (consensus alone "
                    f"{p_alone:.3f}), score/threshold {ratio:.2f}"
                )
        r = np.array(ratios)
        print(
            f"{name}: {len(r)}, unfamiliar {(r > 1).sum()}, score/threshold min {r.min():.2f} "
            f"median {np.median(r):.2f}, below 90 % of the correct panorama answers {sum(below)} "
            f"(consensus alone: {sum(below_alone)}, confidences {min(alone):.2f}-{max(alone):.2f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
