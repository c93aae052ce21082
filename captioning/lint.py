"""`caption lint`: problems in a dataset's captions, before they cost a training run.

Checks: images without a caption, empty captions, the trigger (missing, not first, wrong
casing, repeated), duplicate tags, the token budget of the trainer's text encoder (which
encoder an architecture has is read from `prep.archs`; CLIP 75 / 150 / 225 for SDXL and SD3,
T5 512 for FLUX and Wan, Qwen3 512 for Anima), identity words left in a character LoRA's
captions, and boilerplate openers of sentence captions.

Token counts use a real tokenizer only when one is available offline (`--tokenizer PATH`, or
in the Hugging Face cache); otherwise they are a deliberately generous approximation and the
report says so.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from captioning.captionfile import UnreadableCaption, read_user_caption
from captioning.identity import IdentityRules
from captioning.tags import normalize, split_caption
from prep.archs import ALIASES, ARCH_NAMES, get_arch
from prep.dataset import discover
from prep.executor import Progress
from prep.inputs import printable
from prep.options import StageOptions
from prep.trigger import Trigger, trigger_pattern, validate_trigger

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Encoder:
    name: str
    budget: int
    hub_tokenizer: str
    """Hub repo whose tokenizer is used when it is already in the local cache."""


ENCODERS = {
    "clip": Encoder("CLIP", 75, "openai/clip-vit-large-patch14"),
    "t5": Encoder("T5", 512, "google/t5-v1_1-xxl"),
    "qwen3": Encoder("Qwen3", 512, "Qwen/Qwen3-0.6B"),
}
TRAINERS: dict[str, str] = {name: get_arch(name).text_encoder for name in (*ARCH_NAMES, *ALIASES)}
"""Architecture (or alias) -> text encoder key: a view of `prep.archs`, which holds the fact."""


def encoder_for(trainer: str) -> tuple[str, str]:
    """(architecture name, encoder key) for `--trainer`; ValueError naming the choices when unknown."""
    try:
        spec = get_arch(trainer)
    except KeyError as exc:
        raise ValueError(f"--trainer: {exc.args[0]} (or an alias: {', '.join(ALIASES)})") from None
    if spec.text_encoder not in ENCODERS:
        raise ValueError(f"--trainer {trainer}: no token budget known for its text encoder {spec.text_encoder!r}")
    return spec.name, spec.text_encoder

BOILERPLATE = re.compile(
    r"^(this|the) (image|picture|photo|illustration|artwork) (shows|depicts|features|is|presents|captures)\b|^in this (image|picture)\b",
    re.IGNORECASE,
)


@dataclass
class Issue:
    id: str
    code: str
    severity: Severity
    message: str

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "code": self.code, "severity": self.severity, "message": self.message}


@dataclass
class LintReport:
    folder: Path
    trainer: str
    encoder: str
    budget: int
    token_counter: str
    approximate: bool
    images: int = 0
    captions: int = 0
    issues: list[Issue] = field(default_factory=list)
    max_tokens: int = 0

    @property
    def n_failed(self) -> int:
        """Captions lint could not read (not UTF-8); other issues are findings, not failures."""
        return sum(1 for i in self.issues if i.code == "unreadable")

    def by_code(self) -> Counter[str]:
        return Counter(i.code for i in self.issues)

    @property
    def errors(self) -> int:
        return sum(1 for i in self.issues if i.severity == "error")

    def to_json(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder), "trainer": self.trainer, "encoder": self.encoder, "budget": self.budget,
            "token_counter": self.token_counter, "approximate": self.approximate, "images": self.images,
            "captions": self.captions, "max_tokens": self.max_tokens, "counts": dict(self.by_code()),
            "issues": [i.to_json() for i in self.issues],
        }


def approx_tokens(text: str) -> int:
    """A generous token estimate for BPE/sentencepiece encoders (no download).

    Short common words are one token, longer or rarer ones several (about one per 4 letters),
    each digit and punctuation mark one. Real tokenizers usually count a little less.
    """
    n = 0
    for m in re.finditer(r"[A-Za-z]+|\d|[^\sA-Za-z\d]", text):
        tok = m.group()
        n += max(1, math.ceil(len(tok) / 4)) if tok.isalpha() else 1
    return n


def _hub_counter(repo: str, path: str | None) -> Callable[[str], int] | None:
    """A real tokenizer's counter if it is available without network, else None."""
    if path is None:
        # Importing transformers takes seconds: only do it when the tokenizer is really cached.
        try:
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(repo, "tokenizer_config.json")
        except Exception:
            return None
        if not isinstance(hit, str):
            return None
    try:
        from transformers import AutoTokenizer  # optional

        tok = AutoTokenizer.from_pretrained(path or repo, local_files_only=True)
    except Exception:
        return None
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def token_counter(encoder: str, tokenizer_path: str | None = None) -> tuple[Callable[[str], int], str, bool]:
    """(count, description, approximate)."""
    enc = ENCODERS[encoder]
    real = _hub_counter(enc.hub_tokenizer, tokenizer_path)
    if real is not None:
        return real, f"{tokenizer_path or enc.hub_tokenizer} tokenizer", False
    return approx_tokens, f"approximate {enc.name} count (no tokenizer available offline)", True


def _trigger_issues(item_id: str, text: str, trigger: str) -> list[Issue]:
    hits = list(trigger_pattern(trigger).finditer(text))
    if not hits:
        return [Issue(item_id, "trigger_missing", "error", f"no trigger {trigger!r}: run `prep trigger DIR --trigger {trigger}`")]
    out = []
    if hits[0].start() != 0:
        out.append(Issue(item_id, "trigger_not_first", "warning", f"{trigger!r} is not first (keep_tokens cannot hold it)"))
    wrong = sorted({h.group() for h in hits if h.group() != trigger})
    if wrong:
        out.append(Issue(item_id, "trigger_case", "warning", f"trigger written as {', '.join(map(repr, wrong))}; use exactly {trigger!r}"))
    if len(hits) > 1:
        out.append(Issue(item_id, "trigger_repeated", "warning", f"{trigger!r} appears {len(hits)} times; once is enough"))
    return out


_DETERMINERS = {"her", "his", "their", "its", "the", "a", "an", "with", "and", "of", "my", "your", "our", "has", "have", "having", "is", "are"}
_PROSE_NOUNS = r"(?:hair|eyes|ears|tail|tails|wings|skin|horns|bangs|ponytail|twintails|braid|braids|pupils|breasts)"


def prose_identity_candidates(text: str) -> list[str]:
    """Noun phrases like 'long silver hair' in a sentence caption (determiners dropped)."""
    out = []
    for m in re.finditer(r"\b((?:[\w-]+\s+){0,2})" + _PROSE_NOUNS + r"\b", text, re.IGNORECASE):
        words = [w for w in m.group(0).lower().split() if w not in _DETERMINERS]
        if len(words) >= 2:
            out.append(" ".join(words))
    return out


def _strip_trigger(text: str, trigger: str | None) -> str:
    if trigger and text.lower().startswith(trigger.lower()):
        return text[len(trigger):].lstrip(" ,")
    return text


def is_tag_caption(text: str) -> bool:
    parts = split_caption(text)
    return len(parts) >= 2 and sum(len(p.split()) for p in parts) / len(parts) <= 4


def lint_folder(
    folder: Path | str,
    *,
    trigger: str | None = None,
    trainer: str = "sdxl",
    max_token_length: int | None = None,
    lora_type: str = "character",
    identity: IdentityRules | None = None,
    tokenizer: str | None = None,
    recursive: bool = False,
) -> LintReport:
    """Lint every image's caption under `folder`; returns the issues (never writes)."""
    trainer, enc_key = encoder_for(trainer)
    budget = ENCODERS[enc_key].budget
    if max_token_length:
        if enc_key != "clip" or max_token_length not in (75, 150, 225):
            clip = ", ".join(n for n in ARCH_NAMES if get_arch(n).text_encoder == "clip")
            raise ValueError(f"--max-token-length is 75, 150 or 225 and applies to CLIP trainers ({clip})")
        budget = max_token_length
    count, desc, approx = token_counter(enc_key, tokenizer)
    identity = identity or IdentityRules()
    trigger = validate_trigger(trigger) or None if trigger else None
    folder = Path(folder)
    rep = LintReport(folder, trainer, ENCODERS[enc_key].name, budget, desc, approx)
    seen: dict[str, bool] = {}

    def is_identity(tag: str) -> bool:
        # one decision per distinct tag across the folder: lint time grows with the text, not tags x rules
        key = normalize(tag)
        if key not in seen:
            seen[key] = identity.is_identity(tag)
        return seen[key]

    items = discover(folder, recursive=recursive)
    for s in items.skipped:  # named, never opened
        rep.issues.append(Issue(s.id, "unreadable", "error", s.message))
    for item in items:
        rep.images += 1
        try:
            text = read_user_caption(item.caption_path)
        except UnreadableCaption as exc:
            rep.issues.append(Issue(item.id, "unreadable", "error", str(exc)))
            continue
        if text is None:
            rep.issues.append(Issue(item.id, "no_caption", "error", f"no caption file ({printable(item.caption_path.name)}); caption it or remove the image"))
            continue
        rep.captions += 1
        if not text.strip():
            rep.issues.append(Issue(item.id, "empty", "error", "the caption is empty"))
            continue
        if trigger:
            rep.issues.extend(_trigger_issues(item.id, text, trigger))
        tags = split_caption(text)
        tag_style = is_tag_caption(text)
        if tag_style:
            dup = [t for t, c in Counter(normalize(t) for t in tags).items() if c > 1]
            if dup:
                rep.issues.append(Issue(item.id, "duplicate_tags", "warning", f"duplicate tags: {', '.join(dup)}"))
        elif BOILERPLATE.search(_strip_trigger(text, trigger)):
            rep.issues.append(Issue(item.id, "boilerplate", "warning", "starts with boilerplate ('This image shows ...'); start with the subject"))
        n = count(text)
        rep.max_tokens = max(rep.max_tokens, n)
        if n > budget:
            about = "about " if approx else ""
            rep.issues.append(Issue(item.id, "over_budget", "warning", f"{about}{n} tokens > {budget} for {rep.encoder} ({trainer}): the rest is cut off in training"))
        if lora_type == "character":
            cand = tags if tag_style else prose_identity_candidates(text)
            left = [t for t in cand if not (trigger and normalize(t) == normalize(trigger)) and is_identity(t)]
            if left:
                rep.issues.append(Issue(item.id, "identity_tags", "warning",
                                        f"identity tags in a character set: {', '.join(left)} (caption with --prune-identity, or drop them)"))
    return rep


class LintOptions(StageOptions):
    """The options of `caption lint` and of the lint stage, declared once."""

    trigger: Trigger | None = Field(None, description="The trigger word every caption must start with.",
                                json_schema_extra={"cli": ("--trigger", "-t")})
    trainer: str = Field("sdxl", description=f"Whose text encoder budget applies (an architecture of prep.archs): "
                         f"{', '.join([*ARCH_NAMES, *ALIASES])}.")
    max_token_length: int | None = Field(None, description="CLIP trainers: 75, 150 or 225 (sd-scripts --max_token_length).")
    lora_type: Literal["character", "style", "motion", "object", "concept"] = Field(
        "character", description="character sets are checked for identity tags.")
    tokenizer: str | None = Field(None, description="A local tokenizer folder for exact counts (default: approximate unless cached).")
    recursive: bool = Field(False, description="Include subfolders.", json_schema_extra={"cli": ("--recursive/--no-recursive", "-r")})


class LintStage:
    """The lint stage (`prep.stage.Stage`); it never writes, so `out` is not used."""

    name: ClassVar[str] = "lint"
    Options: ClassVar[type[StageOptions]] = LintOptions

    def run(self, src: Path, out: Path, options: LintOptions, *, progress: Progress | None = None) -> LintReport:
        return lint_folder(src, trigger=options.trigger, trainer=options.trainer, max_token_length=options.max_token_length,
                           lora_type=options.lora_type, tokenizer=options.tokenizer, recursive=options.recursive)


STAGE = LintStage()
