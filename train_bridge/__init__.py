"""train_bridge: trainer configs, estimates, preflight checks and launches.

Knows kohya-ss sd-scripts (Anima, FLUX, SDXL, SD3) and musubi-tuner (Wan 2.1/2.2). Imports
bucket maths and the dataset model from `prep`.
"""
