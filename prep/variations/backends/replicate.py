"""Hosted img2img on Replicate (the default backend; `pip install loraprep[replicate]`).

Each model names its inputs differently, so a `ModelPreset` maps our request (image, prompt,
strength, seed, steps, guidance) onto the model's input names. Billing safety and resume come
from `prep.replicate_run.run_prediction`: the prediction id for a variation is persisted the
moment it is created, so a retry or a rerun after a kill reloads it instead of paying again.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from prep.images import encode_image, load_image
from prep.remote import RateLimiter, RemoteError, RetryPolicy, StateStore, call_with_retry, redact
from prep.variations.backends import GenRequest
from prep.variations.families import FAMILIES, family_of

SDXL_VERSION = "7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc"


@dataclass(frozen=True)
class ModelPreset:
    """How one Replicate model names its img2img inputs (None: the model has no such input)."""

    ref: str
    """owner/name, or owner/name:version for community models that need a version."""
    family: str
    image: str = "image"
    prompt: str = "prompt"
    strength: str | None = "prompt_strength"
    steps: str | None = "num_inference_steps"
    guidance: str | None = "guidance_scale"
    seed: str | None = "seed"
    negative_prompt: str | None = "negative_prompt"
    output_format: str | None = None
    fixed: dict[str, Any] = field(default_factory=dict)
    """Inputs always sent (one output; no watermark on training data)."""


PRESETS: dict[str, ModelPreset] = {
    "black-forest-labs/flux-dev": ModelPreset(
        "black-forest-labs/flux-dev", "flux", guidance="guidance", negative_prompt=None, output_format="output_format",
        fixed={"num_outputs": 1},
    ),
    "black-forest-labs/flux-dev-lora": ModelPreset(
        "black-forest-labs/flux-dev-lora", "flux", guidance="guidance", negative_prompt=None, output_format="output_format",
        fixed={"num_outputs": 1},
    ),
    "stability-ai/sdxl": ModelPreset(
        f"stability-ai/sdxl:{SDXL_VERSION}", "sdxl",
        fixed={"num_outputs": 1, "apply_watermark": False, "refine": "no_refiner"},
    ),
}
ALIASES = {"flux-dev": "black-forest-labs/flux-dev", "flux": "black-forest-labs/flux-dev", "sdxl": "stability-ai/sdxl", "flux-dev-lora": "black-forest-labs/flux-dev-lora"}


def preset_for(model: str) -> ModelPreset:
    """The preset for a model ref or alias; an unknown model gets its family's usual names."""
    ref = ALIASES.get(model, model)
    base, _, version = ref.partition(":")
    if base in PRESETS:
        p = PRESETS[base]
        if version:  # the user pinned a version: keep the names, use their version
            p = ModelPreset(**{**p.__dict__, "ref": f"{base}:{version}"})
        return p
    fam = family_of(ref)
    if fam.name == "flux":
        return ModelPreset(ref, "flux", guidance="guidance", negative_prompt=None, output_format="output_format")
    return ModelPreset(ref, fam.name)


class ReplicateBackend:
    """img2img through Replicate predictions, rate-limited, retried and resumable per variation."""

    name = "replicate"

    def __init__(
        self,
        model: str,
        *,
        state_path: Path | str,
        api_token: str | None = None,
        base_url: str | None = None,
        rpm: float | None = 300.0,
        concurrency: int = 4,
        poll_interval: float = 1.0,
        timeout: float = 1800.0,
        policy: RetryPolicy | None = None,
        extra_input: dict[str, Any] | None = None,
        **_: Any,
    ):
        if not (api_token or os.environ.get("REPLICATE_API_TOKEN")):
            raise RemoteError("REPLICATE_API_TOKEN is not set: create a token at replicate.com/account/api-tokens and export it", kind="auth")
        if importlib.util.find_spec("replicate") is None:
            raise RemoteError("the replicate backend needs the [replicate] extra: pip install 'loraprep[replicate]'", kind="setup")
        self.preset = preset_for(model)
        self.model = self.preset.ref
        self.family = FAMILIES.get(self.preset.family, family_of(self.model))
        self._token = api_token
        self.base_url = base_url
        self.state_path = Path(state_path)
        self._limits = (rpm, concurrency)
        self.limiter = RateLimiter(rpm=rpm, concurrency=concurrency)
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.policy = policy or RetryPolicy()
        self.extra_input = dict(extra_input or {})
        self._state: StateStore | None = None
        self._tls = threading.local()
        self._info: dict[str, dict[str, Any]] = {}
        self._mu = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        s = self.__dict__.copy()
        s["_state"] = None
        s["_tls"] = None
        s["_mu"] = None
        s["limiter"] = None
        return s

    def __setstate__(self, s: dict[str, Any]) -> None:
        self.__dict__.update(s)
        self._tls = threading.local()
        self._mu = threading.Lock()
        self.limiter = RateLimiter(rpm=self._limits[0], concurrency=self._limits[1])

    def __repr__(self) -> str:  # never show the token
        return f"ReplicateBackend(model={self.model!r})"

    def _client(self) -> Any:
        c = getattr(self._tls, "client", None)
        if c is None:
            from prep.replicate_run import make_client

            c = make_client(self._token, base_url=self.base_url)
            self._tls.client = c
        return c

    def _store(self) -> StateStore:
        with self._mu:
            if self._state is None:
                self._state = StateStore(self.state_path)
            return self._state

    def build_input(self, r: GenRequest, image_input: Any) -> dict[str, Any]:
        """The model's input dict for one request, using the preset's names."""
        p = self.preset
        inp: dict[str, Any] = dict(p.fixed)
        inp[p.image] = image_input
        inp[p.prompt] = r.prompt
        if p.strength:
            inp[p.strength] = r.strength
        if p.seed:
            inp[p.seed] = r.seed
        if p.steps:
            inp[p.steps] = r.steps or self.family.steps
        if p.guidance:
            inp[p.guidance] = r.guidance if r.guidance is not None else self.family.guidance
        if p.negative_prompt and r.negative_prompt:
            inp[p.negative_prompt] = r.negative_prompt
        if p.output_format:
            inp[p.output_format] = "png"
        inp.update(self.extra_input)
        return inp

    def describe(self) -> dict[str, Any]:
        return {"model": self.model, "backend": self.name}

    def provenance(self, key: str) -> dict[str, Any]:
        """Per-variation facts (prediction id, whether it was resumed) for the manifest."""
        return dict(self._info.get(key, {}))

    def generate(self, requests: list[GenRequest]) -> list[Image.Image]:
        return [self._one(r) for r in requests]

    def _one(self, r: GenRequest) -> Image.Image:
        from prep.replicate_run import FileInput, classify_error, read_output, run_prediction

        client = self._client()
        file = FileInput(encode_image(r.image, "png"), f"{Path(r.key).stem}.png", "image/png")
        res = run_prediction(
            client,
            self.model,
            self.build_input(r, file),
            key=r.key,
            state=self._store(),
            limiter=self.limiter,
            policy=self.policy,
            poll_interval=self.poll_interval,
            timeout=self.timeout,
        )
        with self._mu:
            self._info[r.key] = {"prediction_id": res.id, "resumed": res.resumed}
        if not res.ok:
            msg = res.error or res.status
            raise RemoteError(redact(f"Replicate prediction {res.id} {res.status}: {msg}"), kind="model" if res.status == "failed" else res.status)
        out = res.output
        if isinstance(out, (list, tuple)):
            if not out:
                raise RemoteError(f"Replicate prediction {res.id} succeeded without an output image")
            out = out[0]
        if isinstance(out, dict):
            out = next((v for v in out.values() if isinstance(v, str) and (v.startswith("http") or v.startswith("data:"))), None)
        if not out:
            raise RemoteError(f"Replicate prediction {res.id} returned no image output")
        data = call_with_retry(lambda: read_output(out), classify=classify_error, policy=self.policy)
        # Generated bytes from the model: the one loader decodes them (EXIF, alpha, bomb guard);
        # saving re-encodes, which drops any metadata the model wrote.
        return load_image(f"prediction {res.id}", data=data).image
