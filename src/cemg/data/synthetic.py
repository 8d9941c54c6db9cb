"""The embedded, seeded multimodal demo dataset (`data.format: synthetic`).

A small Beauty-like catalogue whose every signal is planted on purpose, so the whole pipeline can
be run, tested and demonstrated offline in seconds, and so each CEMG component has something to
find:

* content: every item has a latent category (and a sub-style inside it). Its text (title, brand,
  categories: the Beauty field names) is built from that category's words plus shared adjectives
  and noise words, and its 64x64 PNG image draws a shape, colour and background texture chosen by
  the category, with item-level jitter and pixel noise.
* collaborative: users have favourite categories and a preferred sub-style, so users who
  co-interact share tastes that the content alone does not name.
* sequential: a category-level Markov chain (each category has two likely successors) plus an
  item-level preferred successor, so the next item is predictable from the last one.
* realism: popularity skew, noise steps, no repeated items inside a sequence (Beauty has none),
  about 5% of items without an image and about 2% without any text.

Everything comes from `numpy.random.default_rng` streams derived from one seed: the same seed gives
identical sequences, text and image bytes. Images are written once into `image_dir` and reused
while the stamp file there carries the same generation hash.
"""

from __future__ import annotations

import colorsys
import io
import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from cemg.artifacts import fingerprint
from cemg.config import ConfigError, DataConfig
from cemg.data.dataset import InteractionDataset, ItemTable

log = logging.getLogger(__name__)

# Bump whenever a change here alters the generated output: stale image folders are then rewritten.
GENERATOR_VERSION = 1
STAMP_FILE = ".cemg-synthetic.json"
_IMAGE_NAME = re.compile(r"i\d{4,}\.png")
IMAGE_SIZE = 64
N_STYLES = 3
MIN_LENGTH, MAX_LENGTH = 5, 30
# Independent random streams per concern, so e.g. the user count never changes the catalogue.
_CATALOGUE_STREAM, _USER_STREAM, _IMAGE_STREAM = 1, 2, 3

# Hand-written Beauty-like vocabulary: (group, category name, nouns, three sub-style words, keywords).
# Some style words recur in two categories (volumizing, tinted) so text alone is not a lookup table.
_CATEGORIES: list[tuple[str, str, list[str], list[str], list[str]]] = [
    ("Makeup", "Lipstick", ["lipstick", "lip color", "lip crayon"], ["matte", "gloss", "tinted"], ["creamy", "long-wear", "pigment"]),
    ("Makeup", "Mascara", ["mascara", "lash primer", "lash mascara"], ["volumizing", "lengthening", "waterproof"], ["lashes", "curl", "brush"]),
    ("Makeup", "Nail Polish", ["nail polish", "nail lacquer", "nail enamel"], ["gel", "shimmer", "crackle"], ["chip-resistant", "glossy", "top coat"]),
    ("Skin Care", "Moisturizer", ["moisturizer", "face cream", "hydrating lotion"], ["night", "oil-free", "rich"], ["hyaluronic", "ceramide", "dewy"]),
    ("Skin Care", "Cleanser", ["cleanser", "face wash", "cleansing gel"], ["foaming", "micellar", "exfoliating"], ["pores", "gentle scrub", "makeup remover"]),
    ("Skin Care", "Sunscreen", ["sunscreen", "sun lotion", "sunblock"], ["mineral", "sport", "tinted"], ["spf 50", "broad spectrum", "zinc"]),
    ("Hair Care", "Shampoo", ["shampoo", "hair wash", "cleansing shampoo"], ["clarifying", "color-safe", "volumizing"], ["scalp", "sulfate-free", "keratin"]),
    ("Hair Care", "Conditioner", ["conditioner", "hair mask", "hair conditioner"], ["leave-in", "deep repair", "detangling"], ["argan oil", "frizz", "silky"]),
    ("Hair Care", "Styling", ["hair gel", "styling cream", "hair spray"], ["pomade", "mousse", "texturizing"], ["hold", "humidity", "volume"]),
    ("Fragrance", "Perfume", ["eau de parfum", "perfume", "parfum spray"], ["floral", "woody", "oriental"], ["notes", "jasmine", "amber"]),
    ("Fragrance", "Body Mist", ["body mist", "body spray", "fragrance mist"], ["vanilla", "berry", "fresh"], ["light scent", "all-day", "sweet"]),
    ("Fragrance", "Cologne", ["cologne", "eau de toilette", "aftershave"], ["aquatic", "spicy", "musk"], ["cedar", "citrus", "bergamot"]),
]
_ADJECTIVES = ["luxe", "classic", "daily", "ultra", "gentle", "pro", "natural", "radiant", "soft", "intense", "pure", "velvet"]
_NOISE = ["new", "travel size", "value pack", "limited edition", "2 pack", "refill", "gift set", "1 oz", "0.5 fl oz", "original"]
_SYLLABLES = ["ka", "lo", "mi", "ra", "ve", "no", "sa", "ti", "qu", "el", "da", "ri", "zo", "bel", "mar", "lu", "fen", "ox"]
_SHAPES = ["ellipse", "square", "triangle", "diamond", "ring", "cross"]
_TEXTURES = ["plain", "hstripes", "vstripes", "diagonal", "dots", "checker"]


@dataclass(frozen=True)
class DemoLatents:
    """The planted ground truth behind a generated demo dataset, for tests and diagnostics
    (e.g. how well semantic ids recover categories). Models never see it."""

    item_category: np.ndarray  # (n_items,) latent category per item
    item_style: np.ndarray  # (n_items,) sub-style 0..N_STYLES-1 inside the category
    item_successor: np.ndarray  # (n_items,) each item's preferred next item
    category_transitions: np.ndarray  # (C, C) row-stochastic category Markov chain
    category_names: list[str]
    user_favourites: np.ndarray  # (n_users, 2) favourite categories
    user_style: np.ndarray  # (n_users,) preferred sub-style
    generation_hash: str


@dataclass(frozen=True)
class _Category:
    group: str
    name: str
    nouns: list[str]
    styles: list[str]
    keywords: list[str]
    brands: list[str]


def _check(cfg: DataConfig) -> None:
    if cfg.synthetic_categories < 1:
        raise ConfigError(f"data.synthetic_categories must be >= 1, got {cfg.synthetic_categories}")
    if cfg.synthetic_items < 2 * cfg.synthetic_categories:
        raise ConfigError(
            f"data.synthetic_items ({cfg.synthetic_items}) must be at least twice "
            f"data.synthetic_categories ({cfg.synthetic_categories}) so every category has a successor item"
        )
    if cfg.synthetic_items < MAX_LENGTH:
        raise ConfigError(f"data.synthetic_items must be >= {MAX_LENGTH} (the longest sequence), got {cfg.synthetic_items}")
    if cfg.synthetic_users < 1:
        raise ConfigError(f"data.synthetic_users must be >= 1, got {cfg.synthetic_users}")
    for name in ("synthetic_missing_image", "synthetic_missing_text"):
        value = getattr(cfg, name)
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"data.{name} must be in [0, 1), got {value}")


def _pseudo_word(rng: np.random.Generator, syllables: int) -> str:
    return "".join(rng.choice(_SYLLABLES, size=syllables))


def _brand_pool(rng: np.random.Generator) -> list[str]:
    names = sorted({_pseudo_word(rng, 2).capitalize() for _ in range(24)})
    suffixes = rng.choice(["", "", " Labs", " & Co", " Beauty", " Paris"], size=len(names))
    return [name + str(suffix) for name, suffix in zip(names, suffixes)]


def _categories(n: int, brand_pool: list[str], rng: np.random.Generator) -> list[_Category]:
    """The first 12 categories are the hand-written ones; more get invented pseudo-words."""
    out = []
    for c in range(n):
        if c < len(_CATEGORIES):
            group, name, nouns, styles, keywords = _CATEGORIES[c]
        else:
            stem = _pseudo_word(rng, 3)
            group, name = f"Group {c // 3 + 1}", stem.capitalize()
            nouns = [stem, f"{stem} {_pseudo_word(rng, 2)}", f"{_pseudo_word(rng, 2)} {stem}"]
            styles = [_pseudo_word(rng, 2) for _ in range(N_STYLES)]
            keywords = [_pseudo_word(rng, 2) for _ in range(3)]
        # Three house brands per category from a shared pool smaller than 3 * categories: brands
        # hint at the category without naming it, and neighbouring categories share some.
        brands = [str(b) for b in rng.choice(brand_pool, size=3, replace=False)]
        out.append(_Category(group, name, list(nouns), list(styles), list(keywords), brands))
    return out


def _item_text(cat: _Category, style: int, brand_pool: list[str], rng: np.random.Generator) -> dict[str, str | None]:
    # Like Beauty: mostly a house brand, sometimes any brand, and some items with no brand at all.
    u = rng.random()
    brand = cat.brands[rng.integers(3)] if u < 0.7 else str(rng.choice(brand_pool)) if u < 0.92 else None
    words = [str(rng.choice(_ADJECTIVES)), cat.styles[style], str(rng.choice(cat.nouns))]
    if rng.random() < 0.6:
        words.insert(1, str(rng.choice(cat.keywords)))
    if rng.random() < 0.5:
        words.append(str(rng.choice(_NOISE)))
    title = " ".join(words)
    if brand is not None and rng.random() < 0.5:
        title = f"{brand} {title}"
    return {
        "title": title.title().replace("Spf", "SPF"),
        "brand": brand,
        "categories": ", ".join(["Beauty", cat.group, cat.name, cat.styles[style].title()]),
    }


def _colour(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def _render_image(category: int, style: int, n_categories: int, rng: np.random.Generator) -> bytes:
    """A 64x64 RGB PNG: background texture, foreground shape and hue come from the category;
    sub-style nudges hue and size; position, size, hue and pixel noise are per item."""
    size = IMAGE_SIZE
    shape = _SHAPES[category % len(_SHAPES)]
    # (shape, texture) pairs stay distinct for the first 36 categories: texture = (c // 6 + c) % 6.
    texture = _TEXTURES[(category // len(_SHAPES) + category) % len(_TEXTURES)]
    hue = category / n_categories + 0.012 * (style - 1) + rng.normal(0.0, 0.01)
    fg = _colour(hue, 0.8 + rng.normal(0, 0.05), 0.85 + rng.normal(0, 0.05))
    bg = _colour(hue, 0.18, 0.96)
    ink = _colour(hue, 0.35, 0.8)
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    step = 8
    if texture == "hstripes":
        for y in range(0, size, step):
            draw.rectangle([0, y, size, y + 2], fill=ink)
    elif texture == "vstripes":
        for x in range(0, size, step):
            draw.rectangle([x, 0, x + 2, size], fill=ink)
    elif texture == "diagonal":
        for d in range(-size, size, step):
            draw.line([(d, 0), (d + size, size)], fill=ink, width=2)
    elif texture == "dots":
        for y in range(step // 2, size, step):
            for x in range(step // 2, size, step):
                draw.ellipse([x - 1, y - 1, x + 1, y + 1], fill=ink)
    elif texture == "checker":
        for y in range(0, size, step):
            for x in range((y // step) % 2 * step, size, 2 * step):
                draw.rectangle([x, y, x + step - 1, y + step - 1], fill=ink)
    radius = size * (0.26 + 0.04 * style) * (1.0 + rng.normal(0, 0.06))
    cx, cy = size / 2 + rng.normal(0, 3, size=2)
    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    if shape == "ellipse":
        draw.ellipse(box, fill=fg)
    elif shape == "square":
        draw.rectangle(box, fill=fg)
    elif shape == "triangle":
        draw.polygon([(cx, cy - radius), (cx + radius, cy + radius), (cx - radius, cy + radius)], fill=fg)
    elif shape == "diamond":
        draw.polygon([(cx, cy - radius), (cx + radius, cy), (cx, cy + radius), (cx - radius, cy)], fill=fg)
    elif shape == "ring":
        draw.ellipse(box, outline=fg, width=max(3, int(radius / 3)))
    else:  # cross
        arm = radius / 3
        draw.rectangle([cx - arm, cy - radius, cx + arm, cy + radius], fill=fg)
        draw.rectangle([cx - radius, cy - arm, cx + radius, cy + arm], fill=fg)
    pixels = np.asarray(img, dtype=np.float64) + rng.normal(0.0, 6.0, size=(size, size, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _read_stamp(image_dir: Path) -> str | None:
    try:
        return json.loads((image_dir / STAMP_FILE).read_text(encoding="utf-8")).get("generation_hash")
    except (OSError, ValueError, AttributeError):
        return None


def _write_images(
    image_dir: Path,
    keys: list[str],
    refs: list[str | None],
    category: np.ndarray,
    style: np.ndarray,
    n_categories: int,
    seed: int,
    generation_hash: str,
) -> int:
    """Write the images that are missing (all of them when the stamp differs); returns how many."""
    image_dir.mkdir(parents=True, exist_ok=True)
    fresh = _read_stamp(image_dir) == generation_hash
    if not fresh:
        # A different generation owns this folder: drop its images of items that now have none.
        # Only names this generator makes are touched; anything else in the folder is left alone.
        wanted = {r for r in refs if r is not None}
        for old in image_dir.glob("i*.png"):
            if _IMAGE_NAME.fullmatch(old.name) and old.name not in wanted:
                old.unlink(missing_ok=True)
    todo = [i for i, ref in enumerate(refs) if ref is not None and (not fresh or not (image_dir / ref).is_file())]
    for i in tqdm(todo, desc="demo images", unit="img", leave=False, disable=None if todo else True):
        # One stream per item: an image's bytes do not depend on which other images get redrawn.
        rng = np.random.default_rng([seed, _IMAGE_STREAM, i])
        _atomic_write_bytes(image_dir / str(refs[i]), _render_image(int(category[i]), int(style[i]), n_categories, rng))
    if todo or not fresh:
        stamp = {"generation_hash": generation_hash, "generator_version": GENERATOR_VERSION, "items": len(keys)}
        _atomic_write_bytes(image_dir / STAMP_FILE, json.dumps(stamp, indent=2).encode())
    return len(todo)


# Sequence model. Values tuned on the default size so the signals are clearly learnable but not
# trivial: see tests/data/test_synthetic.py for the bigram-vs-popularity check.
P_NOISE = 0.08  # next item drawn by global popularity, ignoring every pattern
P_SUCCESSOR = 0.45  # next item is the previous item's preferred successor (item-level pattern)
P_FAVOURITE = 0.25  # next category is one of the user's favourites instead of the Markov step
STYLE_BOOST = 3.0  # weight multiplier for items of the user's preferred sub-style
P_STAY, P_NEXT = 0.3, (0.3, 0.2)  # category chain: stay, first and second likely successor


@dataclass(frozen=True)
class _Catalogue:
    category: np.ndarray
    style: np.ndarray
    popularity: np.ndarray  # (n_items,) global sampling weights, summing to 1
    category_popularity: np.ndarray
    transitions: np.ndarray
    successor: np.ndarray
    fields: dict[str, list[str | None]]
    has_image: np.ndarray
    names: list[str]


def _transitions(n: int, rng: np.random.Generator) -> np.ndarray:
    if n == 1:
        return np.ones((1, 1))
    trans = np.zeros((n, n))
    for c in range(n):
        others = np.array([o for o in range(n) if o != c])
        nxt = rng.choice(others, size=min(2, len(others)), replace=False)
        rest = np.setdiff1d(others, nxt)
        trans[c, c] = P_STAY
        for o, p in zip(nxt, P_NEXT):
            trans[c, o] = p
        leftover = 1.0 - trans[c].sum()
        if len(rest):
            trans[c, rest] = leftover / len(rest)
        else:
            trans[c, c] += leftover
    return trans


def _catalogue(cfg: DataConfig, seed: int) -> _Catalogue:
    rng = np.random.default_rng([seed, _CATALOGUE_STREAM])
    n, n_cat = cfg.synthetic_items, cfg.synthetic_categories
    pool = _brand_pool(rng)
    cats = _categories(n_cat, pool, rng)
    # Balanced categories in a random id order, so item ids carry no category information.
    category = rng.permutation(np.arange(n) % n_cat)
    style = rng.integers(0, N_STYLES, size=n)
    category_popularity = rng.dirichlet(np.full(n_cat, 8.0))
    item_weight = rng.lognormal(0.0, 0.5, size=n)
    popularity = np.empty(n)
    for c in range(n_cat):
        members = category == c
        popularity[members] = category_popularity[c] * item_weight[members] / item_weight[members].sum()
    transitions = _transitions(n_cat, rng)
    # Preferred successor: mostly inside the same category, otherwise in the category's most
    # likely successor category. Drawn uniformly (not by popularity), which keeps tail items alive
    # under 5-core filtering: weighting by popularity left a dozen items below 5 interactions.
    successor = np.empty(n, dtype=np.int64)
    for i in range(n):
        row = transitions[category[i]].copy()
        row[category[i]] = 0.0
        target = category[i] if rng.random() < 0.6 or n_cat == 1 else int(np.argmax(row))
        successor[i] = rng.choice(np.flatnonzero((category == target) & (np.arange(n) != i)))
    # Missing modalities: the two sets are disjoint, so every item keeps at least one content signal.
    order = rng.permutation(n)
    n_no_image = int(round(cfg.synthetic_missing_image * n))
    n_no_text = int(round(cfg.synthetic_missing_text * n))
    has_image = np.ones(n, dtype=bool)
    has_image[order[:n_no_image]] = False
    has_text = np.ones(n, dtype=bool)
    has_text[order[n_no_image : n_no_image + n_no_text]] = False
    fields: dict[str, list[str | None]] = {"title": [], "brand": [], "categories": []}
    for i in range(n):
        text = _item_text(cats[category[i]], int(style[i]), pool, rng)
        for name in fields:
            fields[name].append(text[name] if has_text[i] else None)
    return _Catalogue(
        category, style, popularity / popularity.sum(), category_popularity, transitions, successor,
        fields, has_image, [c.name for c in cats],
    )


def _weighted_index(weights: np.ndarray, rng: np.random.Generator) -> int | None:
    # Generator.choice(p=...) validates p on every call, which dominated generation time.
    cum = np.cumsum(weights)
    if cum[-1] <= 0:
        return None
    return int(min(np.searchsorted(cum, rng.random() * cum[-1], side="right"), len(cum) - 1))


def _sequences(cfg: DataConfig, cat: _Catalogue, seed: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, _USER_STREAM])
    n_cat = cfg.synthetic_categories
    members = [np.flatnonzero(cat.category == c) for c in range(n_cat)]
    everything = np.arange(len(cat.category))
    n_fav = min(2, n_cat)
    favourites = np.stack(
        [rng.choice(n_cat, size=n_fav, replace=False, p=cat.category_popularity) for _ in range(cfg.synthetic_users)]
    )
    user_style = rng.integers(0, N_STYLES, size=cfg.synthetic_users)
    lengths = np.clip(np.rint(rng.lognormal(np.log(10.0), 0.5, size=cfg.synthetic_users)), MIN_LENGTH, MAX_LENGTH)
    sequences = []
    for u in range(cfg.synthetic_users):
        style_weight = np.where(cat.style == user_style[u], STYLE_BOOST, 1.0) * cat.popularity
        seen = np.zeros(len(cat.category), dtype=bool)
        seq: list[int] = []

        def pick(pool: np.ndarray) -> int | None:
            index = _weighted_index(style_weight[pool] * ~seen[pool], rng)
            return None if index is None else int(pool[index])

        if rng.random() < 0.7:
            category = int(favourites[u, rng.integers(n_fav)])
        else:
            category = _weighted_index(cat.category_popularity, rng)
        while len(seq) < lengths[u]:
            item = None
            if seq and rng.random() < P_NOISE:
                item = pick(everything)
            elif seq and rng.random() < P_SUCCESSOR and not seen[cat.successor[seq[-1]]]:
                item = int(cat.successor[seq[-1]])
            if item is None:
                if seq:
                    prev = int(cat.category[seq[-1]])
                    if rng.random() < P_FAVOURITE:
                        category = int(favourites[u, rng.integers(n_fav)])
                    else:
                        category = _weighted_index(cat.transitions[prev], rng)
                # A category the user has exhausted falls back to the whole catalogue.
                item = pick(members[category])
                if item is None:
                    item = pick(everything)
            seen[item] = True
            seq.append(item)
        sequences.append(np.asarray(seq, dtype=np.int64))
    return sequences, favourites, user_style


def generation_hash(cfg: DataConfig, seed: int) -> str:
    """Identifies the generated output: images in a folder stamped with it are reused as they are."""
    return fingerprint(
        "cemg-synthetic", GENERATOR_VERSION, IMAGE_SIZE, int(seed), cfg.synthetic_users, cfg.synthetic_items,
        cfg.synthetic_categories, cfg.synthetic_missing_image, cfg.synthetic_missing_text,
    )


def generate_demo(cfg: DataConfig, seed: int, image_dir: Path) -> tuple[InteractionDataset, DemoLatents]:
    """The demo dataset and its planted ground truth; images are written to `image_dir`."""
    _check(cfg)
    if int(seed) < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed}")
    seed = int(seed)
    start = time.perf_counter()
    image_dir = Path(image_dir)
    gen_hash = generation_hash(cfg, seed)
    cat = _catalogue(cfg, seed)
    sequences, favourites, user_style = _sequences(cfg, cat, seed)
    n = cfg.synthetic_items
    keys = [f"i{i + 1:04d}" for i in range(n)]
    refs: list[str | None] = [f"{k}.png" if cat.has_image[i] else None for i, k in enumerate(keys)]
    written = _write_images(image_dir, keys, refs, cat.category, cat.style, cfg.synthetic_categories, seed, gen_hash)
    dataset = InteractionDataset(
        name="demo",
        user_keys=[f"u{u + 1:04d}" for u in range(cfg.synthetic_users)],
        sequences=sequences,
        items=ItemTable(keys=keys, fields=cat.fields, image_refs=refs),
        image_root=image_dir,
    )
    latents = DemoLatents(
        item_category=cat.category, item_style=cat.style, item_successor=cat.successor,
        category_transitions=cat.transitions, category_names=cat.names, user_favourites=favourites,
        user_style=user_style, generation_hash=gen_hash,
    )
    log.info(
        "demo data: %d users, %d items, %d interactions, %d categories; %d of %d images written to %s (%.2fs)",
        dataset.n_users, dataset.n_items, dataset.n_interactions, cfg.synthetic_categories, written,
        int(cat.has_image.sum()), image_dir, time.perf_counter() - start,
    )
    return dataset, latents


def generate_dataset(cfg: DataConfig, seed: int, image_dir: Path) -> InteractionDataset:
    """The seeded demo dataset (name "demo", users u0001.., items i0001..) with PNGs in `image_dir`."""
    return generate_demo(cfg, seed, image_dir)[0]
