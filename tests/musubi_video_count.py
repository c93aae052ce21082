"""Count a dataset TOML's batches with musubi-tuner's OWN dataset code (run with musubi's Python).

    python musubi_video_count.py CHECKOUT DATASET.toml OUT.json

Builds the datasets with musubi's `BlueprintGenerator` (architecture "wan"), runs each video
dataset's real `retrieve_latent_cache_batches` (decode, re-time, resize, frame extraction),
writes an empty latent and text-encoder cache file for every item it yields (the names are
what training reads), then calls the real `prepare_for_training` and reports
`len(batch_manager)` and its buckets. Image datasets go through the real glob, selector and
batch manager on their PIL sizes. Nothing is encoded: no VAE, no weights, CPU only. Imports nothing from loraprep.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _image_rows(ds) -> dict:
    """An image dataset: its real glob and BucketSelector on PIL sizes, keyed as prepare_for_training
    keys Wan image buckets (width, height, fp_latent_window_size); the cache files are not faked
    here because image training reads their headers."""
    from musubi_tuner.dataset.bucket import BucketBatchManager, BucketSelector
    from musubi_tuner.dataset.media_utils import glob_images
    from PIL import Image

    sel = BucketSelector(ds.resolution, ds.enable_bucket, ds.bucket_no_upscale, ds.architecture)
    buckets: dict = {}
    for path in glob_images(ds.image_directory, caption_extension=ds.caption_extension):
        with Image.open(path) as im:
            key = (*sel.get_bucket_resolution(im.size), ds.fp_latent_window_size)
        buckets.setdefault(key, []).extend([path] * ds.num_repeats)
    mgr = BucketBatchManager(buckets, ds.batch_size)
    return {"batches": len(mgr), "items": sum(len(v) for v in buckets.values()), "buckets": {f"{k[0]}x{k[1]}": len(v) for k, v in buckets.items()}, "image": True}


def main() -> int:
    checkout, toml_path, out = sys.argv[1:4]
    sys.path.insert(0, os.path.join(checkout, "src"))
    from musubi_tuner.dataset import config_utils
    from musubi_tuner.dataset.image_video_dataset import VideoDataset

    user = config_utils.load_user_config(toml_path)
    bp = config_utils.BlueprintGenerator(config_utils.ConfigSanitizer()).generate(user, argparse.Namespace(debug_dataset=False), architecture="wan")
    group = config_utils.generate_dataset_group_by_blueprint(bp.dataset_group, training=False)
    rows = []
    for ds in group.datasets:
        if not isinstance(ds, VideoDataset):
            rows.append(_image_rows(ds))
            continue
        os.makedirs(ds.cache_directory, exist_ok=True)
        n_items = 0
        for _key, batch in ds.retrieve_latent_cache_batches(1):
            for item in batch:
                open(item.latent_cache_path, "wb").close()
                # the text-encoder cache is per video: training looks for <stem>_wan_te.safetensors
                drop = 3 if isinstance(ds, VideoDataset) else 2  # video names carry start-frames too
                stem = "_".join(os.path.basename(item.latent_cache_path).split("_")[:-drop])
                open(os.path.join(ds.cache_directory, f"{stem}_{ds.architecture}_te.safetensors"), "wb").close()
                n_items += 1
        ds.prepare_for_training()
        buckets = {"x".join(str(v) for v in k if v is not None): len(v) for k, v in ds.batch_manager.buckets.items()}
        rows.append({"batches": len(ds.batch_manager), "items": n_items, "buckets": buckets})
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(rows, fh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
