"""Fetch an Amazon 2014 category (S3-Rec preprocessing) with item metadata and images.

Three public files describe a category, plus one image per item:
  * the S3-Rec sequence file `<Name>.txt` (RUCAIBox/CIKM2020-S3Rec), ids numbered from 1;
  * P5's `datamaps.json`, whose `id2item` maps those ids to Amazon ASINs (the sequence file has no
    ASINs, and S3-Rec shuffled users before numbering, so the map cannot be rebuilt);
  * McAuley's 2014 `meta_<Name>.json.gz` (title, brand, categories, imUrl; one Python-literal dict
    per line, not JSON);
  * the images at imUrl, for the items in the sequence file only.
The result, `items.jsonl.gz` with an `image` column, is what the s3rec reader reads.

Every transfer goes to `<file>.part` and resumes with an HTTP Range request; a finished file is
checked (sha256 where KNOWN_SHA256 names it, else the announced Content-Length and a format check:
gzip stream, image decode, JSON, sequence syntax) and downloaded again from scratch if it fails.
A missing or broken image is counted, never fatal. We write this by hand because no maintained
library does resumable, verified, concurrent HTTP downloads with Range for plain URLs (pooch
verifies but does not resume; fsspec neither verifies nor resumes).
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import logging
import re
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import requests
import yaml
from tqdm import tqdm

from cemg.data.errors import DataError

log = logging.getLogger(__name__)

# Pinned commits so that the digests below stay valid.
S3REC_BASE = "https://raw.githubusercontent.com/RUCAIBox/CIKM2020-S3Rec/2a81540ae18615d88ef88227b0c066e5b74781e5/data"
META_BASE = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles"
KNOWN_DATAMAPS = {
    "Beauty": "https://raw.githubusercontent.com/Wenyueh/LLM-RecSys-ID/"
    "2200ad9fef647ef755c01d6d7e5c5de3082606c5/data/beauty/datamaps.json",
    "Sports_and_Outdoors": "https://raw.githubusercontent.com/Wenyueh/LLM-RecSys-ID/"
    "d5d5e8b2471fe074308d2a2615f40e0a879eb8be/data/sports/datamaps.json",
    "Toys_and_Games": "https://raw.githubusercontent.com/WangXFng/RDRec/"
    "aa78eec5511e5937c66ba41c41e77ab6447ac0b3/data/toys/datamaps.json",
}
# sha256 of files whose exact bytes we hold (the copies described in shared/data/SOURCES.md).
KNOWN_SHA256 = {
    f"{S3REC_BASE}/Beauty.txt": "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8",
    KNOWN_DATAMAPS["Beauty"]: "715ab04838ff1ba21238475ed453a89e8c30aa6214b904d27a79e4168fc7b612",
}
_ASIN = re.compile(r"'asin': '([^']*)'")
# ASINs (and the ISBN-10s some categories use) are short alphanumeric codes; they become image file
# names, so anything else (a `/`, `..`) in datamaps.json or the metadata is refused.
_SAFE_ASIN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp"}


class DownloadError(DataError):
    """A file could not be fetched intact; the message names its URL."""


class NotFoundError(DownloadError):
    """The server answered 404/410: retrying will not help."""


class CorruptError(DownloadError):
    """Every attempt arrived complete but failed verification (digest or format)."""


@dataclass(frozen=True)
class Sources:
    """Where the files come from; tests and mirrors point these at another server."""

    s3rec_base: str = S3REC_BASE  # <s3rec_base>/<Name>.txt
    meta_base: str = META_BASE  # <meta_base>/meta_<Name>.json.gz
    datamaps_url: str | None = None  # full URL; None: KNOWN_DATAMAPS[name]

    def urls(self, name: str) -> dict[str, str]:
        datamaps = self.datamaps_url or KNOWN_DATAMAPS.get(name)
        if datamaps is None:
            raise DownloadError(
                name, f"no known datamaps.json (S3-Rec id -> ASIN) for {name!r}; known: "
                f"{sorted(KNOWN_DATAMAPS)}. Pass its URL with --datamaps-url",
            )
        return {
            "sequences": f"{self.s3rec_base.rstrip('/')}/{name}.txt",
            "datamaps": datamaps,
            "meta": f"{self.meta_base.rstrip('/')}/meta_{name}.json.gz",
        }


@dataclass
class DownloadReport:
    name: str
    out_dir: str
    urls: dict[str, str]
    sha256: dict[str, str]  # file name -> digest of what was written
    items: int = 0
    items_with_metadata: int = 0
    images_ok: int = 0
    images_no_url: int = 0
    images_missing: int = 0  # server said 404/410, or the connection kept failing
    images_corrupt: int = 0  # arrived but did not decode as an image, every attempt
    seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)  # image URL -> reason (first 50 kept)


# --- one file ---------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Fetcher:
    """Resumable, verified GETs; one requests.Session per thread (Session is not thread-safe)."""

    def __init__(self, retries: int = 3, timeout: float = 60.0, backoff: float = 1.0):
        self.retries, self.timeout, self.backoff = retries, timeout, backoff
        self._local = threading.local()

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
            # identity: byte offsets for Range and Content-Length must refer to the file itself
            self._local.session.headers.update({"Accept-Encoding": "identity", "User-Agent": "cemg-download"})
        return self._local.session

    def fetch(
        self,
        url: str,
        dest: Path,
        sha256: str | None = None,
        check: Callable[[Path], str | None] | None = None,
        progress: bool = True,
    ) -> Path:
        """Download `url` to `dest` unless a verified copy is there; raise DownloadError on failure."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_file():
            problem = _problem(dest, sha256, check)
            if problem is None:
                log.debug("%s: already downloaded", dest)
                return dest
            log.warning("%s exists but %s; downloading again", dest, problem)
            dest.unlink()
        part = dest.with_name(dest.name + ".part")
        last, corrupt = "no attempt", False
        for attempt in range(1, self.retries + 1):
            try:
                self._transfer(url, part, progress)
            except NotFoundError:
                raise
            except (requests.RequestException, _Incomplete) as err:
                # The .part keeps what arrived; the next attempt resumes from there.
                last, corrupt = f"{type(err).__name__}: {err}", False
                log.warning("%s: %s (attempt %d/%d)", url, last, attempt, self.retries)
                self._pause(attempt)
                continue
            problem = _problem(part, sha256, check)
            if problem is None:
                part.replace(dest)
                return dest
            last, corrupt = problem, True
            log.warning("%s: %s (attempt %d/%d); fetching again from scratch", url, problem, attempt, self.retries)
            part.unlink()
            self._pause(attempt)
        error = CorruptError if corrupt else DownloadError
        raise error(url, f"failed after {self.retries} attempts: {last}")

    def _pause(self, attempt: int) -> None:
        if attempt < self.retries:
            time.sleep(self.backoff * attempt)

    def _transfer(self, url: str, part: Path, progress: bool) -> None:
        offset = part.stat().st_size if part.is_file() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with self._session().get(url, headers=headers, stream=True, timeout=self.timeout) as response:
            if response.status_code in (404, 410):
                raise NotFoundError(url, f"HTTP {response.status_code}")
            if response.status_code == 416 and offset:
                return  # the .part already holds the whole file (or garbage): verification decides
            response.raise_for_status()
            total = None
            if response.status_code == 206:
                start, total = _content_range(response.headers.get("Content-Range", ""))
                if start != offset:
                    part.unlink()
                    raise _Incomplete(f"asked for bytes from {offset}, server sent from {start}")
                mode = "ab"
                log.info("%s: resuming at byte %d", url, offset)
            else:
                offset, mode = 0, "wb"  # the server ignored the Range header: start over
                if "Content-Length" in response.headers:
                    total = int(response.headers["Content-Length"])
            name = Path(urlparse(url).path).name
            with open(part, mode) as f, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, desc=name, leave=False,
                disable=not progress,
            ) as bar:
                for chunk in response.iter_content(1 << 16):
                    f.write(chunk)
                    bar.update(len(chunk))
        size = part.stat().st_size
        if total is not None and size != total:
            raise _Incomplete(f"received {size} of {total} bytes")


class _Incomplete(Exception):
    pass


def _content_range(value: str) -> tuple[int, int | None]:
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", value.strip())
    if not match:
        raise _Incomplete(f"malformed Content-Range {value!r}")
    return int(match.group(1)), None if match.group(2) == "*" else int(match.group(2))


def _problem(path: Path, sha256: str | None, check: Callable[[Path], str | None] | None) -> str | None:
    if sha256 is not None:
        actual = sha256_of(path)
        return None if actual == sha256 else f"sha256 {actual[:12]}... differs from the expected {sha256[:12]}..."
    return check(path) if check is not None else None


# --- format checks (used where no digest is known) --------------------------------------------


def check_gzip(path: Path) -> str | None:
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 20):
                pass
    except (OSError, EOFError, zlib.error) as err:
        return f"not a complete gzip file ({err})"
    return None


def check_image(path: Path) -> str | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return f"not a readable image ({err})"
    return None


def check_datamaps(path: Path) -> str | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"not valid JSON ({err})"
    except RecursionError:
        return "not valid JSON (nested too deeply)"
    if not isinstance(data, dict) or not isinstance(data.get("id2item"), dict):
        return "has no `id2item` object"
    return None


def check_sequences(path: Path) -> str | None:
    from cemg.data.readers import read_s3rec_sequences

    try:
        read_s3rec_sequences(path)
    except DataError as err:
        return str(err)
    return None


# --- the category -----------------------------------------------------------------------------


def download_amazon(
    name: str,
    out_dir: Path,
    sources: Sources = Sources(),
    *,
    images: bool = True,
    workers: int = 8,
    digests: Mapping[str, str] = KNOWN_SHA256,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 1.0,
) -> DownloadReport:
    """Fetch category `name` (e.g. Beauty) into `out_dir`: the sequence file, datamaps.json,
    meta_<name>.json.gz, images/<ASIN>.<ext> and the joined items.jsonl.gz; also writes
    download.json (what was fetched, digests, counts) and data.yaml (a `data:` config section)."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    urls = sources.urls(name)
    fetcher = Fetcher(retries=retries, timeout=timeout, backoff=backoff)
    targets = {
        "sequences": (out_dir / f"{name}.txt", check_sequences),
        "datamaps": (out_dir / "datamaps.json", check_datamaps),
        "meta": (out_dir / f"meta_{name}.json.gz", check_gzip),
    }
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {
            pool.submit(fetcher.fetch, urls[key], dest, digests.get(urls[key]), check): key
            for key, (dest, check) in targets.items()
        }
        for future in as_completed(futures):
            path = future.result()
            log.info("%s: %s (%.1f MB)", futures[future], path, path.stat().st_size / 1e6)
    paths = {key: dest for key, (dest, _) in targets.items()}
    report = DownloadReport(name, str(out_dir), urls, {p.name: sha256_of(p) for p in paths.values()})

    item_ids = _sequence_items(paths["sequences"])
    asins = _asins(paths["datamaps"], item_ids)
    meta = _read_meta(paths["meta"], set(asins.values()))
    report.items, report.items_with_metadata = len(item_ids), sum(a in meta for a in asins.values())
    log.info("%s: %d items, %d with metadata", name, report.items, report.items_with_metadata)

    image_refs: dict[str, str] = {}
    if images:
        image_refs = _fetch_images(fetcher, meta, out_dir, workers, report)
    items_path = _write_items(out_dir / "items.jsonl.gz", item_ids, asins, meta, image_refs)
    report.sha256[items_path.name] = sha256_of(items_path)
    report.seconds = round(time.perf_counter() - start, 1)
    (out_dir / "download.json").write_text(json.dumps(asdict(report), indent=2), encoding="utf-8")
    _write_config(out_dir, name, paths["sequences"], items_path, with_images=images)
    log.info("%s: wrote %s, download.json and data.yaml in %.1f s", name, items_path, report.seconds)
    return report


def _sequence_items(path: Path) -> list[int]:
    from cemg.data.readers import read_s3rec_sequences

    # Python ints: ids beyond int64 are legal in the file and must not overflow a numpy cast.
    return sorted({int(i) for i in read_s3rec_sequences(path)["item"]})


def _asins(path: Path, item_ids: list[int]) -> dict[int, str]:
    id2item = json.loads(Path(path).read_text(encoding="utf-8"))["id2item"]
    missing = [i for i in item_ids if str(i) not in id2item]
    if missing:
        raise DownloadError(
            path, f"does not match the sequence file: {len(missing)} of its {len(item_ids)} item ids "
            f"(e.g. {missing[:3]}) have no ASIN", field="id2item",
        )
    asins = {i: id2item[str(i)] for i in item_ids}
    for i, asin in asins.items():
        if not (isinstance(asin, str) and _SAFE_ASIN.fullmatch(asin)):
            raise DownloadError(path, f"item {i} maps to {json.dumps(asin)[:80]}, not an ASIN (letters, digits, _ "
                                "or -)", field="id2item")
    return asins


def _read_meta(path: Path, wanted: set[str]) -> dict[str, dict]:
    """Records of the wanted ASINs. The 2014 metadata lines are Python literals (single quotes),
    so json fails on them; literal_eval is slow, hence the regex pre-filter on the ASIN."""
    meta: dict[str, dict] = {}
    lineno = 0
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(tqdm(f, desc=path.name, unit=" lines", leave=False), 1):
                match = _ASIN.search(line)
                if match is None or match.group(1) not in wanted:
                    continue
                try:
                    record = ast.literal_eval(line)
                except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:
                    # TypeError: an unhashable dict key such as {[1]: 2}
                    raise DownloadError(path, f"not a Python-literal record ({type(err).__name__}: {err})",
                                        line=lineno) from None
                # The regex may have matched inside another field's text: only the record's own
                # asin counts, and only a wanted one (it becomes an image file name).
                if isinstance(record, dict) and record.get("asin") in wanted:
                    meta[record["asin"]] = record
    except (UnicodeDecodeError, OSError, EOFError, zlib.error) as err:
        raise DownloadError(path, f"not readable gzip-compressed UTF-8 text ({type(err).__name__}: {err})",
                            line=lineno + 1) from None
    return meta


def _image_name(asin: str, url: str) -> str:
    suffix = Path(urlparse(url).path).suffix.lower()
    return f"{asin}{suffix if suffix in _IMAGE_SUFFIXES else '.jpg'}"


def _fetch_images(fetcher: Fetcher, meta: dict[str, dict], out_dir: Path, workers: int,
                  report: DownloadReport) -> dict[str, str]:
    jobs = {}
    for asin, record in meta.items():
        url = record.get("imUrl")
        if not (isinstance(url, str) and url.startswith(("http://", "https://"))):
            report.images_no_url += 1
            continue
        jobs[asin] = (url, f"images/{_image_name(asin, url)}")
    refs: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {
            pool.submit(fetcher.fetch, url, out_dir / ref, None, check_image, False): (asin, url, ref)
            for asin, (url, ref) in jobs.items()
        }
        for future in tqdm(as_completed(futures), total=len(futures), desc="images", unit=" img"):
            asin, url, ref = futures[future]
            try:
                future.result()
            except DownloadError as err:
                if isinstance(err, CorruptError):
                    report.images_corrupt += 1
                else:
                    report.images_missing += 1
                if len(report.failures) < 50:
                    report.failures[url] = str(err)
                continue
            refs[asin] = ref
            report.images_ok += 1
    log.info("images: %d ok, %d without URL, %d missing, %d corrupt", report.images_ok,
             report.images_no_url, report.images_missing, report.images_corrupt)
    return refs


def _flatten(value) -> list[str]:
    """McAuley categories are a list of category paths; keep each name once, in order."""
    out: list[str] = []
    stack = [value]
    while stack:
        current = stack.pop(0)
        if isinstance(current, (list, tuple)):
            stack[:0] = list(current)
        elif current and str(current) not in out:
            out.append(str(current))
    return out


def _write_items(path: Path, item_ids: list[int], asins: dict[int, str], meta: dict[str, dict],
                 image_refs: dict[str, str]) -> Path:
    part = path.with_name(path.name + ".part")
    with gzip.open(part, "wt", encoding="utf-8") as f:
        for item in item_ids:
            asin = asins[item]
            record = meta.get(asin, {})
            rank = record.get("salesRank") or {}
            row = {
                "item_id": item,
                "asin": asin,
                "title": record.get("title"),
                "brand": record.get("brand"),
                "categories": _flatten(record.get("categories", [])),
                "description": record.get("description"),
                "price": record.get("price"),
                "sales_rank": next(iter(rank.values()), None) if isinstance(rank, dict) else None,
                "image": image_refs.get(asin),
                "image_url": record.get("imUrl"),
            }
            line = json.dumps(row, ensure_ascii=False)
            # A `\ud800` escape in the metadata decodes to half a UTF-16 pair, which UTF-8 cannot
            # hold: join real pairs, replace lone halves with U+FFFD.
            line = line.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            f.write(line + "\n")
    part.replace(path)
    return path


def _write_config(out_dir: Path, name: str, sequences: Path, items: Path, with_images: bool) -> None:
    data = {
        "name": name.lower(),
        "format": "s3rec",
        "path": str(sequences),
        "items_path": str(items),
        "text_fields": ["title", "brand", "categories"],
        "image_column": "image",
    }
    if with_images:
        data["image_root"] = str(out_dir)
    (out_dir / "data.yaml").write_text(yaml.safe_dump({"data": data}, sort_keys=False), encoding="utf-8")
