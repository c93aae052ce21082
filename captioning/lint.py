"""`caption lint`: problems in a dataset's captions, before they cost a training run.

Checks: images without a caption, empty captions, the trigger (missing, not first, wrong
casing, repeated), duplicate tags, the token budget of the trainer's text encoder (which
encoder an architecture has is read from `prep.archs`; CLIP 75 / 150 / 225 for SDXL and SD3,
T5 512 for FLUX and Wan, Qwen3 512 for Anima), identity words left in a character LoRA's
captions, boilerplate openers of sentence captions, and what teaches the wrong identity:
another character's WD tag (`other_character`), a caption that is the trigger alone or nearly
so (`trigger_only`), and near-identical scenes (`near_identical`: the same shot under other
lighting or with a small edit, by perceptual hash at a looser threshold than dedupe's; grouped
for review, never removed).

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
from captioning.identity import COUNT_TAGS, IdentityRules
from captioning.tags import known_character_tags, normalize, split_caption
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
    character: str | None = None
    """The character tag the trigger stands for (given, or the set's dominant one)."""
    character_tags_from: str | None = None
    """Where the character-tag list came from (a WD CSV, the caption records), None when unknown."""
    near_identical: list[list[str]] = field(default_factory=list)
    """Groups of near-identical images (ids), for review."""

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
            "character": self.character, "character_tags_from": self.character_tags_from,
            "near_identical": self.near_identical,
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


MIN_TAGS = 1
"""Fewer describing tags than this is `trigger_only`: the trigger alone, or with only count tags (1girl, solo)."""
MIN_WORDS = 4
"""Sentence captions: fewer words than this besides the trigger is `trigger_only`."""
NEAR_THRESHOLD = 10
"""Bits of 64 (coarse pHash) within which two images are the same shot: lighting, tint, gamma and
contrast changes of scikit-image photos measured 0-8 bits, different photos 20 or more (docs/check.md)."""
FLAT_STD = 2.0
"""Grey-level spread below which an image has no structure to compare (a flat colour): never grouped."""


def _records_characters(folder: Path) -> tuple[set[str], dict[str, list[str]]]:
    """Character tags the WD tagger found, from the caption records (manifest.jsonl) in `folder`."""
    from prep.manifest import MANIFEST_NAME, Manifest

    names: set[str] = set()
    per_image: dict[str, list[str]] = {}
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return names, per_image
    for (step, item_id), rec in Manifest(path).latest().items():
        chars = rec.data.get("characters") if step == "caption" else None
        if isinstance(chars, dict):
            per_image[item_id] = [normalize(c) for c in chars]
            names.update(per_image[item_id])
    return names, per_image


def _describing(tags: list[str], trigger: str | None) -> list[str]:
    trig = normalize(trigger) if trigger else None
    return [t for t in tags if normalize(t) != trig and not COUNT_TAGS.match(normalize(t))]


def is_trigger_only(text: str, trigger: str | None, *, min_tags: int = MIN_TAGS) -> bool:
    """A caption that says (almost) nothing but the trigger: the trigger then learns the whole image."""
    if is_tag_caption(text) or "," in text:
        return len(_describing(split_caption(text), trigger)) < min_tags
    rest = trigger_pattern(trigger).sub(" ", text) if trigger else text
    return len(re.findall(r"[A-Za-z]{2,}", rest)) < MIN_WORDS


def near_identical_groups(items: list[Any], *, threshold: int = NEAR_THRESHOLD, workers: int | None = None) -> list[list[str]]:
    """Groups of the same shot (perceptual hash within `threshold` bits, mirrors included), for review.

    One small decode per image gives both its hashes and its grey spread; flat images (a solid
    colour: nothing to compare) are never grouped. Unreadable images are left to the rest of lint."""
    from prep.dedupe import HashedImage, group_duplicates
    from prep.executor import run_step

    by_id = {it.id: it for it in items}
    hashed = []
    for r in run_step(_ShotStep(), items, workers=workers, batch_size=8, description="comparing shots"):
        if r.status == "ok" and not r.data["flat"]:
            d, it = r.data, by_id[r.id]
            hashed.append(HashedImage(r.id, it.path, tuple(d["size"]), d["file_size"], d["hash"], d["mirror"], d["fine"], d["fine_mirror"],
                                      it.has_caption))
    return [[g.keep, *g.others] for g in group_duplicates(hashed, threshold)]


class _ShotStep:
    """Executor step: an image's perceptual hashes and whether it is flat, from one draft decode."""

    def __call__(self, batch: list[Any]) -> list[Any]:
        import numpy as np

        from prep.dedupe import HASH_DRAFT, image_hashes
        from prep.executor import Result
        from prep.images import ImageLoadError, load_image

        out = []
        for it in batch:
            try:
                li = load_image(it.path, draft_size=HASH_DRAFT)
            except ImageLoadError as exc:
                out.append(Result(it.id, "failed", str(it.path), reason=str(exc)))
                continue
            grey = np.asarray(li.image.convert("L").resize((32, 32)), dtype=np.float32)
            out.append(Result(it.id, "ok", str(it.path), data={**image_hashes(li.image), "size": list(li.size),
                                                               "file_size": it.path.stat().st_size,
                                                               "flat": float(grey.std()) < FLAT_STD}))
        return out


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
    character: str | None = None,
    tags_csv: str | None = None,
    min_tags: int = MIN_TAGS,
    near_identical: bool = True,
    near_threshold: int = NEAR_THRESHOLD,
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
    tag_texts: dict[str, list[str]] = {}
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
        if lora_type == "character" and (not trigger or trigger_pattern(trigger).search(text)) and is_trigger_only(text, trigger, min_tags=min_tags):
            rep.issues.append(Issue(item.id, "trigger_only", "warning",
                                    "the caption is the trigger alone or nearly so: the trigger would learn the background, "
                                    "pose and clothes too; describe what changes between images"))
        if tag_style or len(tags) >= 2:
            tag_texts[item.id] = tags
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
    if lora_type == "character":
        _other_characters(rep, folder, tag_texts, trigger, character, tags_csv)
    if near_identical and len(items) > 1:
        groups = near_identical_groups(list(items), threshold=near_threshold)
        rep.near_identical = groups
        for g in groups:
            for member in g:
                others = [x for x in g if x != member]
                rep.issues.append(Issue(member, "near_identical", "warning",
                                        f"the same shot as {', '.join(others[:5])}{' ...' if len(others) > 5 else ''} "
                                        "(other lighting, a tint or a small edit?): review the group; every copy weights "
                                        "this shot again in training"))
    return rep


def _other_characters(rep: LintReport, folder: Path, tag_texts: dict[str, list[str]], trigger: str | None, character: str | None,
                      tags_csv: str | None) -> None:
    """`other_character`: a caption carrying a WD character tag other than the trigger's character.

    The character tags are the WD tagger's category 4 (its selected_tags.csv, found offline) plus
    those the caption records name. The trigger's own character is `character` when given, else
    the character tag in more than half of the captions (the set's dominant one), else none:
    then every character tag is someone else's.
    """
    known, source = known_character_tags(tags_csv)
    from_records, _ = _records_characters(folder)
    if from_records:
        known |= from_records
        source = f"{source} + caption records" if source else "caption records (manifest.jsonl)"
    rep.character_tags_from = source
    if not known:
        return
    skip = {normalize(trigger)} if trigger else set()
    found = {i: [t for t in tags if normalize(t) in known and normalize(t) not in skip] for i, tags in tag_texts.items()}
    own = normalize(character) if character else None
    if own is None:
        counts = Counter(normalize(t) for ts in found.values() for t in dict.fromkeys(ts))
        top = counts.most_common(1)
        if top and top[0][1] * 2 > len(tag_texts) and len(tag_texts) >= 2:
            own = top[0][0]
    rep.character = own
    for item_id, tags in found.items():
        others = [t for t in tags if normalize(t) != own]
        if others:
            whose = f"the set's character is {own}" if own else "no character tag stands for the trigger"
            rep.issues.append(Issue(item_id, "other_character", "warning",
                                    f"another character's tag: {', '.join(others)} ({whose}): the LoRA would learn the wrong "
                                    "identity; drop the tag, or the image if it is someone else"))


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
    character: str | None = Field(None, description="The WD character tag the trigger stands for (default: the tag in most captions, if over half).")
    tags_csv: str | None = Field(None, description="A WD selected_tags.csv (or tagger folder) listing character tags (default: the cached tagger's).")
    min_tags: int = Field(MIN_TAGS, ge=0, description="Flag `trigger_only` below this many describing tags (trigger and 1girl/solo not counted).")
    near_identical: bool = Field(True, description="Group near-identical scenes (decodes a small version of each image).",
                                 json_schema_extra={"cli": ("--near-identical/--no-near-identical",)})
    near_threshold: int = Field(NEAR_THRESHOLD, ge=0, le=64, description="Near-identical within this many bits of 64 (dedupe uses 8 plus a pixel check).")


class LintStage:
    """The lint stage (`prep.stage.Stage`); it never writes, so `out` is not used."""

    name: ClassVar[str] = "lint"
    Options: ClassVar[type[StageOptions]] = LintOptions

    def run(self, src: Path, out: Path, options: LintOptions, *, progress: Progress | None = None) -> LintReport:
        return lint_folder(src, trigger=options.trigger, trainer=options.trainer, max_token_length=options.max_token_length,
                           lora_type=options.lora_type, tokenizer=options.tokenizer, recursive=options.recursive,
                           character=options.character, tags_csv=options.tags_csv, min_tags=options.min_tags,
                           near_identical=options.near_identical, near_threshold=options.near_threshold)


STAGE = LintStage()
