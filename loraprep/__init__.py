"""loraprep: the umbrella CLI that mounts `prep`, `caption` and `train_bridge`."""

__version__ = "0.1.0"
