"""Crop geometry and bucket maths, without pixels."""

from __future__ import annotations

import math

import pytest

from prep.framing import PRESETS, SHARE_RANGES, bucket_spec, parse_aspect, plan_face_crop, plan_full_crop


def sd_scripts_buckets(reso: int, min_size: int = 256, max_size: int = 1024, step: int = 64) -> set[tuple[int, int]]:
    """sd-scripts `make_bucket_resolutions`, written out again from its rules (reference prep.md §2.1)."""
    area = reso * reso
    side = int(math.sqrt(area) // step) * step
    out = {(side, side)}
    w = min_size
    while w <= max_size:
        h = min(max_size, int((area // w) // step) * step)
        if h >= min_size:
            out.add((w, h))
            out.add((h, w))
        w += step
    return out


def sd_scripts_select(buckets: set[tuple[int, int]], w: int, h: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """sd-scripts `select_bucket` without bucket_no_upscale: (bucket, resized size)."""
    if (w, h) in buckets:
        reso = (w, h)
    else:
        ordered = sorted(buckets)
        ar = w / h
        reso = min(ordered, key=lambda b: abs(b[0] / b[1] - ar))
    scale = reso[1] / h if w / h > reso[0] / reso[1] else reso[0] / w
    return reso, (int(w * scale + 0.5), int(h * scale + 0.5))


@pytest.mark.parametrize("reso,max_size,count", [(512, 1024, 17), (768, 1536, 29), (1024, 2048, 41)])
def test_buckets_follow_sd_scripts_rules(reso: int, max_size: int, count: int) -> None:
    # the range `train_bridge config` writes into dataset.toml: min 256, max max(2 x res, 1024)
    spec = bucket_spec(reso)
    assert (spec.min_reso, spec.max_reso) == (256, max_size)
    assert set(spec.buckets) == sd_scripts_buckets(reso, max_size=max_size)
    assert len(spec.buckets) == count
    for b in spec.buckets:
        assert b[0] % 64 == 0 and b[1] % 64 == 0
        assert b[0] * b[1] <= reso * reso
        # a fixed point: sd-scripts puts an image of exactly this size in this bucket, no resize
        assert sd_scripts_select(set(spec.buckets), *b) == (b, b)
        assert spec.is_fixed_point(b)


@pytest.mark.parametrize("reso", [512, 768, 1024])
@pytest.mark.parametrize("framing", ["face", "bust", "upper-body"])
def test_face_crops_snap_to_a_bucket_and_hold_the_face(reso: int, framing: str) -> None:
    spec = bucket_spec(reso)
    face = (1800.0, 700.0, 2100.0, 1080.0)
    plan = plan_face_crop((4000, 3000), face, PRESETS[framing], spec)
    x0, y0, x1, y1 = plan.box
    assert 0 <= x0 and 0 <= y0 and x1 <= 4000 and y1 <= 3000 and not plan.padded
    assert x0 <= face[0] and y0 <= face[1] and x1 >= face[2] and y1 >= face[3]
    lo, hi = SHARE_RANGES[framing]
    assert lo <= plan.share <= hi
    assert plan.bucket in spec.buckets and spec.is_fixed_point(plan.bucket)
    # the crop has the bucket's aspect ratio (to the rounding of one source pixel)
    assert abs((x1 - x0) / (y1 - y0) - plan.bucket[0] / plan.bucket[1]) < 2 / (y1 - y0) + 1e-9
    # head-room: more space above the face than the framing's share alone would give at the top
    assert face[1] - y0 > 0.05 * (y1 - y0)
    # centred horizontally on the face
    assert abs((x0 + x1) / 2 - (face[0] + face[2]) / 2) <= 1


def test_step_16_for_anima_gives_finer_aspect_ratios() -> None:
    coarse = bucket_spec(1024, trainer="anima")
    fine = bucket_spec(1024, trainer="anima", step=16)
    assert coarse.steps == 64 and fine.steps == 16
    assert len(fine.buckets) > len(coarse.buckets)
    plan = plan_face_crop((4000, 3000), (1800, 700, 2100, 1080), PRESETS["bust"], fine, aspect=0.7)
    assert plan.bucket[0] % 16 == 0 and plan.bucket[1] % 16 == 0
    assert fine.is_fixed_point(plan.bucket)
    with pytest.raises(ValueError, match="not accepted"):
        bucket_spec(1024, trainer="sdxl", step=16)
    with pytest.raises(ValueError, match="unknown architecture"):
        bucket_spec(1024, trainer="nope")


def test_crop_past_the_edge_shifts_inside() -> None:
    spec = bucket_spec(1024)
    face = (3850.0, 10.0, 3990.0, 180.0)  # top-right corner
    plan = plan_face_crop((4000, 3000), face, PRESETS["bust"], spec)
    x0, y0, x1, y1 = plan.box
    assert x1 == 4000 and y0 == 0 and not plan.padded
    assert x0 <= face[0] and y1 >= face[3]
    assert 0.30 <= plan.share <= 0.40  # shifting keeps the share


def test_pad_keeps_the_share_when_the_image_is_too_small() -> None:
    spec = bucket_spec(512)
    face = (150.0, 40.0, 350.0, 300.0)  # a big face in a small image
    tight = plan_face_crop((500, 500), face, PRESETS["upper-body"], spec)
    padded = plan_face_crop((500, 500), face, PRESETS["upper-body"], spec, pad=True)
    assert not tight.padded and tight.share > 0.25  # limited by the image: tighter than the preset
    assert padded.padded and padded.share == pytest.approx(0.20, abs=0.01)
    x0, y0, x1, y1 = tight.box
    assert x0 >= 0 and y0 >= 0 and x1 <= 500 and y1 <= 500
    assert x0 <= face[0] and y0 <= face[1] and x1 >= face[2] and y1 >= face[3]


def test_face_filling_the_image_still_fits() -> None:
    spec = bucket_spec(1024)
    plan = plan_face_crop((600, 800), (0.0, 0.0, 600.0, 800.0), PRESETS["face"], spec)
    x0, y0, x1, y1 = plan.box
    assert (x0, y0) >= (0, 0) and x1 <= 600 and y1 <= 800
    assert spec.is_fixed_point(plan.bucket)


def test_full_framing_holds_the_whole_subject() -> None:
    spec = bucket_spec(1024)
    subject = (100.0, 50.0, 300.0, 990.0)  # a tall sprite in a 400x1000 canvas
    plan = plan_full_crop((400, 1000), subject, spec)
    x0, y0, x1, y1 = plan.box
    assert x0 <= 100 and y0 <= 50 and x1 >= 300 and y1 >= 990
    assert plan.bucket == (448, 2048)  # nearest aspect ratio at max_bucket_reso 2048


def test_no_face_fallback_is_the_largest_centred_bucket_crop() -> None:
    spec = bucket_spec(1024)
    plan = plan_full_crop((1600, 900), None, spec)
    x0, y0, x1, y1 = plan.box
    assert y0 == 0 and y1 == 900
    assert abs((x0 + x1) / 2 - 800) <= 1
    assert plan.bucket == spec.nearest_bucket(1600 / 900)


def test_parse_aspect() -> None:
    assert parse_aspect("4:5") == pytest.approx(0.8)
    assert parse_aspect("1.5") == 1.5
    assert parse_aspect(None) is None
    with pytest.raises(ValueError):
        parse_aspect("100:1")
