"""The familiarity model (`service.familiarity`) on planted distributions with known answers, its
storage in the calibration sidecar, and the features it reads from a model's forward pass."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from model.checkpoint import CheckpointError, file_sha256
from model.weights import default_weights_path
from service.calibration import FORMAT, NO_MATCH_NOTE, Calibration, Logistic, load_calibration, sidecar_path
from service.catalog import TilePlace
from service.familiarity import (
    UNFAMILIAR_REASON,
    BlockMoments,
    Familiarity,
    decode_array,
    embed_recording,
    encode_array,
    fit_familiarity,
)
from service.localizer import Localizer
from service.locate import locate

DIM = 20


def gaussian(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """n points of N(shift, diag(1..DIM)) (variances that differ, as real features' do)."""
    rng = np.random.default_rng(seed)
    return shift + rng.normal(0.0, 1.0, (n, DIM)) * np.sqrt(np.arange(1, DIM + 1))


def test_score_of_a_full_rank_model_is_the_mahalanobis_distance_per_dimension() -> None:
    # With every dimension a component the score is |x - mean|^2_Sigma / dim, Sigma the (ddof 1)
    # sample covariance of the standardised features: computed here with numpy's own covariance.
    x = gaussian(400, 0)
    model = fit_familiarity(x, components=DIM)
    mean, cov = x.mean(0), np.cov(x, rowvar=False)
    q = gaussian(5, 1, shift=0.5)
    d = q - mean
    expected = np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d) / DIM
    assert model.score(q) == pytest.approx(expected, rel=1e-6)


def test_scores_of_in_distribution_points_follow_chi_square() -> None:
    # For Gaussian data the full-rank score x dim is close to chi-square with dim degrees of freedom.
    model = fit_familiarity(gaussian(5000, 0), components=DIM)
    s = model.score(gaussian(5000, 1)) * DIM
    assert np.median(s) == pytest.approx(stats.chi2.median(DIM), rel=0.05)
    assert np.percentile(s, 99) == pytest.approx(stats.chi2.ppf(0.99, DIM), rel=0.08)


def test_threshold_rejects_the_asked_share_of_held_out_points() -> None:
    model = fit_familiarity(gaussian(2000, 0), components=8, percentile=95.0)
    rejected = float(np.mean(model.score(gaussian(20_000, 1)) > model.threshold))
    assert rejected == pytest.approx(0.05, abs=0.015)
    assert model.percentile == 95.0 and model.fitted_on == 2000 and len(model.variances) == 8


def test_queries_of_several_rows_are_judged_as_fitted() -> None:
    """A query of 4 rows (a photo at 4 headings) counts its most familiar row; fitted with its
    groups, the threshold rejects the asked share of such held-out queries, not about none."""
    rows = 4
    groups = np.repeat(np.arange(2000), rows)
    model = fit_familiarity(gaussian(2000 * rows, 0), components=8, percentile=95.0, groups=groups)
    fresh = gaussian(5000 * rows, 1).reshape(5000, rows, DIM)
    rejected = float(np.mean([not model.familiar(q)[0] for q in fresh]))
    assert rejected == pytest.approx(0.05, abs=0.015)
    assert model.fitted_on == 2000
    with pytest.raises(ValueError, match="need at least 10 queries"):
        fit_familiarity(gaussian(40, 0), groups=np.repeat(np.arange(9), [5, 5, 5, 5, 4, 4, 4, 4, 4]))


def test_shifted_points_are_unfamiliar() -> None:
    model = fit_familiarity(gaussian(1000, 0), components=8, percentile=99.5)
    # A shift of 3 standard deviations of the widest dimension in every dimension.
    far = gaussian(200, 2, shift=3.0 * math.sqrt(DIM))
    assert all(not model.familiar(row[None])[0] for row in far)
    near = gaussian(200, 3)
    assert np.mean([model.familiar(row[None])[0] for row in near]) > 0.95


def test_residual_counts_what_the_components_miss() -> None:
    # Data near a 4-dimensional subspace: a step out of it (orthogonal to the subspace after
    # standardisation) is far, a step of the same length within it is not.
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, (4, DIM))
    x = rng.normal(0.0, 1.0, (3000, 4)) @ a + 0.05 * rng.normal(0.0, 1.0, (3000, DIM))
    model = fit_familiarity(x, components=4, percentile=99.0)
    mean, scale = x.mean(0), x.std(0)
    span = np.linalg.qr((a / scale).T)[0]  # (DIM, 4) orthonormal basis of the standardised span
    inside = span[:, 0]
    outside = rng.normal(0.0, 1.0, DIM)
    outside -= span @ (span.T @ outside)
    outside /= np.linalg.norm(outside)
    assert model.score((mean + scale * inside)[None])[0] < model.threshold
    assert model.score((mean + scale * outside)[None])[0] > 10 * model.threshold


def test_a_query_of_several_inputs_counts_its_most_familiar_row() -> None:
    model = fit_familiarity(gaussian(1000, 0), components=8)
    far = gaussian(1, 2, shift=50.0)
    near = gaussian(1, 3)
    familiar, score = model.familiar(np.concatenate([far, near]))
    assert familiar and score == pytest.approx(float(model.score(near)[0]))


def test_fit_rejects_too_few_points_and_a_bad_percentile() -> None:
    with pytest.raises(ValueError, match="at least 10 queries"):
        fit_familiarity(gaussian(9, 0))
    with pytest.raises(ValueError, match="percentile"):
        fit_familiarity(gaussian(100, 0), percentile=100.0)


def test_array_encoding_round_trips_and_names_a_bad_field() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    assert decode_array(encode_array(a), (2, 3), "x") == pytest.approx(a)
    with pytest.raises(ValueError, match="'basis'.*expected 8"):
        decode_array(encode_array(a), (2, 4), "basis")
    with pytest.raises(ValueError, match="'mean': not base64"):
        decode_array("!!", (1,), "mean")


def _calibration(familiarity: dict[str, Familiarity], sha: str = "ab" * 32) -> Calibration:
    model = Logistic(coef=(1.0, 0.0, 0.0, 0.0), intercept=-1.0, mean=(0.0,) * 4, scale=(1.0,) * 4)
    return Calibration({"panorama": model}, sha, familiarity=familiarity, unfamiliar_confidence=0.02)


def test_sidecar_round_trip_keeps_the_familiarity_model(tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    model = fit_familiarity(gaussian(500, 0), components=6)
    _calibration({"panorama": model}).save(sidecar_path(weights))
    data = json.loads(sidecar_path(weights).read_text())
    assert data["format"] == FORMAT == "cvm-calibration/2"
    loaded = load_calibration(weights, "ab" * 32)
    assert loaded is not None and set(loaded.familiarity) == {"panorama"}
    assert loaded.unfamiliar_confidence == 0.02
    q = gaussian(50, 1, shift=1.0)
    # float32 storage: scores agree to float32 precision
    assert loaded.familiarity["panorama"].score(q) == pytest.approx(model.score(q), rel=1e-4)
    assert loaded.familiarity["panorama"].threshold == model.threshold
    assert loaded.familiar("photo", q[:1]) is None  # no model of that kind
    assert loaded.familiar("panorama", None) is None  # nothing to judge


def test_format_1_sidecar_loads_without_familiarity(tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    data = _calibration({}).to_json()
    data["format"] = "cvm-calibration/1"
    del data["familiarity"], data["unfamiliar_confidence"]
    sidecar_path(weights).write_text(json.dumps(data))
    loaded = load_calibration(weights, "ab" * 32)
    assert loaded is not None and loaded.familiarity == {} and loaded.unfamiliar_confidence == 0.0
    assert loaded.familiar("panorama", gaussian(1, 0)) is None


def test_sidecar_with_familiarity_for_other_weights_is_ignored(tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    _calibration({"panorama": fit_familiarity(gaussian(100, 0), components=4)}, "cd" * 32).save(
        sidecar_path(weights)
    )
    assert load_calibration(weights, "ab" * 32) is None


def test_unfamiliar_confidence_must_be_a_probability(tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    data = _calibration({}).to_json()
    data["unfamiliar_confidence"] = 1.5
    sidecar_path(weights).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"w\.calibration\.json.*unfamiliar_confidence 1\.5"):
        load_calibration(weights, "ab" * 32)


def test_broken_familiarity_names_the_file_and_the_field(tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    data = _calibration({"panorama": fit_familiarity(gaussian(100, 0), components=4)}).to_json()
    data["familiarity"]["panorama"]["basis"] = encode_array(np.zeros(3))
    sidecar_path(weights).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"w\.calibration\.json.*'basis'"):
        load_calibration(weights, "ab" * 32)


class TinyVgg(nn.Module):
    """Two 'blocks' with outputs computed independently below."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Conv2d(3, 2, 1), nn.Conv2d(2, 3, 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return x


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.vgg_ground = TinyVgg()

    def embed(self, x: torch.Tensor, photo: object = False) -> np.ndarray:
        """Two 'views' (the input and its mirror), as `model.views.describe` orders them."""
        views = torch.cat([x, torch.flip(x, dims=(-1,))])
        out = self.vgg_ground(views).mean((2, 3))
        return out.reshape(2, len(x), -1).mean(0).detach().numpy()


class TinyLocalizer:
    """What `embed_recording` reads of a localizer: `embed`, `model`, `calibration`."""

    def __init__(self, model: TinyNet, blocks: tuple[int, ...] | None) -> None:
        self.model = model
        fam = {"panorama": fit_familiarity(gaussian(100, 0), components=4, blocks=blocks)} if blocks else {}
        self.calibration = Calibration({}, "ab" * 32, familiarity=fam)

    def embed(self, x: torch.Tensor, photo: object = False) -> np.ndarray:
        return self.model.embed(x, photo)


def test_block_moments_are_channel_means_and_stds_averaged_over_views() -> None:
    net = TinyNet()
    x = torch.randn(3, 3, 4, 5)
    # the blocks named by the calibration's familiarity models are the ones read
    _, feats = embed_recording(TinyLocalizer(net, (0, 1)), x, False)
    assert feats is not None and feats.shape == (3, 2 * 2 + 2 * 3)
    with torch.no_grad():
        expected = []
        for view in (x, torch.flip(x, dims=(-1,))):
            a = net.vgg_ground.blocks[0](view)
            b = net.vgg_ground.blocks[1](a)
            expected.append(
                torch.cat([a.mean((2, 3)), a.std((2, 3)), b.mean((2, 3)), b.std((2, 3))], 1).numpy()
            )
    assert feats == pytest.approx((expected[0] + expected[1]) / 2, abs=1e-5)


def test_hooks_are_removed_and_a_model_without_blocks_gives_no_features() -> None:
    net = TinyNet()
    x = torch.randn(1, 3, 4, 5)
    embed_recording(TinyLocalizer(net, (0, 1)), x, False)
    assert all(not b._forward_hooks for b in net.vgg_ground.blocks)
    # blocks the model lacks (the default BLOCKS go up to 3): no features, the same descriptors
    emb, feats = embed_recording(TinyLocalizer(net, None), x, False)
    assert feats is None and emb == pytest.approx(net.embed(x))
    with pytest.raises(RuntimeError, match="no forward pass"):
        BlockMoments(net, (0,)).features(1)


def _one_group() -> tuple[list[TilePlace], list[float]]:
    """One tile far ahead of the rest: the estimate's mass is all its own (p ~ 1 below)."""
    tiles = [
        TilePlace(i, 47.0 + 0.01 * i, 8.0, 7.9995, 47.0 + 0.01 * i - 0.0003, 8.0005, 47.0003 + 0.01 * i)
        for i in range(5)
    ]
    return tiles, [0.9, 0.1, 0.1, 0.1, 0.1]


@pytest.mark.parametrize("cap", [0.0, 0.3, 0.9])
def test_locate_caps_an_unfamiliar_query_and_never_calls_it_confident(cap: float) -> None:
    model = Logistic(coef=(1.0, 0.0, 0.0, 0.0), intercept=0.0, mean=(0.0,) * 4, scale=(1.0,) * 4)
    fam = fit_familiarity(gaussian(500, 0), components=6)
    cal = Calibration(
        {"panorama": model}, "ab" * 32, familiarity={"panorama": fam}, unfamiliar_confidence=cap
    )
    tiles, scores = _one_group()
    near, far = gaussian(1, 1), gaussian(1, 2, shift=50.0)
    familiar = locate(tiles, scores, "panorama", (70.0, 35.0), cal, near)
    assert familiar is not None and familiar.confident and familiar.reason is None
    p = familiar.confidence  # sigmoid(logit(mass)) = mass, near 1
    assert p > 0.99
    assert familiar.familiarity == pytest.approx(float(fam.score(near)[0]))
    est = locate(tiles, scores, "panorama", (70.0, 35.0), cal, far)
    assert est is not None
    assert est.confidence == pytest.approx(min(p, cap))
    assert est.confident is False and est.note == NO_MATCH_NOTE and est.reason == UNFAMILIAR_REASON
    # no features, or a kind without a model: not judged
    for kind, feats in (("panorama", None), ("photo", far)):
        unjudged = locate(tiles, scores, kind, (70.0, 35.0), cal, feats)
        assert unjudged is not None and unjudged.reason is None and unjudged.familiarity is None


def test_a_familiarity_model_that_does_not_fit_the_weights_stops_the_start(tmp_path: Path) -> None:
    """A sidecar for these weights whose familiarity model reads another number of features than
    the model's VGG blocks give (2 x their 16 + 32 + 64 output channels = 224 for the shipped
    weights) is refused by name at load, not met as an error on every query."""
    weights = tmp_path / "w.pt"
    shutil.copyfile(default_weights_path(), weights)
    sha = file_sha256(weights)
    rng = np.random.default_rng(0)
    _calibration({"panorama": fit_familiarity(rng.normal(size=(300, 224)), components=4)}, sha).save(
        sidecar_path(weights)
    )
    assert Localizer.from_checkpoint(weights).calibration is not None  # 224 features: fits
    wrong = fit_familiarity(gaussian(300, 0), components=4)  # DIM = 20 features
    _calibration({"panorama": wrong}, sha).save(sidecar_path(weights))
    refused = r"w\.calibration\.json: the panorama familiarity model reads 20 features"
    with pytest.raises(CheckpointError, match=refused):
        Localizer.from_checkpoint(weights)
