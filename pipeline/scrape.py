"""The scrape stage, the only module that talks to the web: extra training images per label,
with corrupt files, duplicates and copies of test images kept out.

Pages are fetched with one requests Session per thread (timeouts, retries with backoff on 429
and 5xx, a User-Agent, a per-host rate limit) and parsed with BeautifulSoup. Every image link
found is recorded in `data/<name>/extra.csv` as soon as its page is parsed, then downloaded
(streamed, capped, content-type checked), fully decoded and compared by sha256 and perceptual
hash with what is already kept, with the training images and with the test images. Kept
images are stored as RGB PNGs named by content hash under `data/<name>/extra/<label>/`;
decodable rejects (duplicates, leaks, too small) only as thumbnails under
`extra/.rejected/<status>/`, for the report; undecodable files nowhere.
A re-run skips every URL the manifest already settled, so an interrupted scrape loses nothing.
"""

import contextlib
import functools
import hashlib
import http.server
import io
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlparse

import imagehash
import numpy as np
import pandas as pd
import requests
from bs4 import BeautifulSoup
from PIL import Image
from requests.adapters import HTTPAdapter
from tqdm import tqdm
from urllib3.util.retry import Retry

from pipeline import sources
from pipeline.config import Config, Scrape
from pipeline.errors import PipelineError
from pipeline.files import atomic_path, write_csv
from pipeline.images import open_images
from pipeline.paths import Paths

COLUMNS = ["kind", "label", "page", "url", "status", "detail", "sha256", "phash", "width", "height", "bytes", "path"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
SAVE_EVERY = 25  # results between manifest writes
THUMBNAIL = 96  # side of the stored thumbnail of a decodable but rejected image


# --- HTTP --------------------------------------------------------------------------------------


class RateLimit:
    """At most `per_second` requests to each host, across threads."""

    def __init__(self, per_second: float):
        self.interval, self.next_slot, self.lock = 1.0 / per_second, {}, threading.Lock()

    def wait(self, url: str) -> None:
        host = urlparse(url).netloc
        with self.lock:
            now = time.monotonic()
            slot = max(now, self.next_slot.get(host, now))
            self.next_slot[host] = slot + self.interval
        time.sleep(max(0.0, slot - now))


class Http:
    """requests Sessions, one per thread, with retries, timeouts and the rate limit."""

    def __init__(self, cfg: Scrape):
        self.cfg, self.limit, self.local = cfg, RateLimit(cfg.rate_limit), threading.local()

    def session(self) -> requests.Session:
        if not hasattr(self.local, "session"):
            # read=False: a server too slow once is too slow again; its timeout is reported as one
            retry = Retry(
                total=self.cfg.retries,
                read=False,
                backoff_factor=self.cfg.backoff,
                status_forcelist=(429, 500, 502, 503, 504),
                allowed_methods=("GET",),
                respect_retry_after_header=True,
                raise_on_status=False,
            )
            session = requests.Session()
            session.mount("http://", HTTPAdapter(max_retries=retry))
            session.mount("https://", HTTPAdapter(max_retries=retry))
            session.headers["User-Agent"] = self.cfg.user_agent
            self.local.session = session
        return self.local.session

    def get(self, url: str, stream: bool = False) -> requests.Response:
        self.limit.wait(url)
        return self.session().get(url, timeout=self.cfg.timeout, stream=stream)


def allowed(url: str, cfg: Scrape) -> bool:
    parts = urlparse(url)
    if parts.scheme not in ("http", "https"):
        return False
    host = parts.hostname or ""
    return not cfg.allowed_domains or any(host == d or host.endswith(f".{d}") for d in cfg.allowed_domains)


# --- pages -------------------------------------------------------------------------------------


def image_links(html: str, page_url: str) -> list[str]:
    """Every image a page shows or links: img src, srcset and lazy data-src(set), links to image
    files, og:image; resolved against the page, in order, without repeats."""
    soup = BeautifulSoup(html, "html.parser")
    found = []
    for img in soup.find_all(["img", "source"]):
        for attribute in ("src", "data-src", "data-original", "data-lazy-src"):
            found.append(img.get(attribute))
        for attribute in ("srcset", "data-srcset"):
            found += [part.strip().split(" ")[0] for part in (img.get(attribute) or "").split(",")]
    found += [a.get("href") for a in soup.find_all("a") if _looks_like_image(a.get("href") or "")]
    found += [m.get("content") for m in soup.find_all("meta", property=["og:image", "og:image:url"])]
    links = [urljoin(page_url, link.strip()) for link in found if link and not link.strip().startswith("data:")]
    return list(dict.fromkeys(links))


def _looks_like_image(href: str) -> bool:
    return urlparse(href).path.lower().endswith(IMAGE_SUFFIXES)


def page_urls(source, cfg: Scrape, gallery: str | None) -> list[str]:
    pages = [p.replace("{gallery}", gallery or "{gallery}") for p in source.pages]
    if "{gallery}" in "".join(pages):
        raise PipelineError("scrape.sources uses {gallery}, but scrape.serve_gallery is off")
    pages += (
        [source.search.replace("{query}", requests.utils.quote(q)) for q in source.queries] if source.search else []
    )
    return pages[: cfg.max_pages]


# --- images ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    status: str
    detail: str = ""
    data: bytes | None = None
    image: Image.Image | None = None


def download(http: Http, url: str, cfg: Scrape) -> Outcome:
    """The body of an image URL, streamed and capped, or why not."""
    try:
        with http.get(url, stream=True) as response:
            if response.status_code != 200:
                return Outcome("http_error", f"HTTP {response.status_code}")
            kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if kind and not kind.startswith("image/"):
                return Outcome("not_image", f"Content-Type {kind}")
            if int(response.headers.get("Content-Length") or 0) > cfg.max_bytes:
                return Outcome("too_large", f"{response.headers['Content-Length']} bytes")
            body = io.BytesIO()
            for chunk in response.iter_content(64 * 1024):
                body.write(chunk)
                if body.tell() > cfg.max_bytes:
                    return Outcome("too_large", f"over {cfg.max_bytes} bytes")
            return Outcome("downloaded", data=body.getvalue())
    except requests.exceptions.Timeout:
        return Outcome("timeout", f"no answer in {cfg.timeout} s")
    except requests.exceptions.RequestException as exc:
        return Outcome("http_error", type(exc).__name__)


def verify(data: bytes, cfg: Scrape) -> Outcome:
    """A full decode, not a header check: truncated, empty, non-image, tiny and bomb files fail."""
    if not data:
        return Outcome("corrupt", "empty file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size  # from the header: a bomb is refused before it is decoded
            if width * height > cfg.max_pixels:
                return Outcome("too_large", f"{width}x{height} pixels, over scrape.max_pixels")
            image.load()
            rgb = image.convert("RGB")
    except Image.DecompressionBombError as exc:  # Pillow's own, larger limit
        return Outcome("too_large", str(exc).split(".")[0])
    except Image.UnidentifiedImageError:
        return Outcome("not_image", "not an image format")
    except (OSError, SyntaxError, ValueError) as exc:
        return Outcome("corrupt", str(exc)[:120])
    if min(rgb.size) < cfg.min_side:
        return Outcome("too_small", f"{rgb.size[0]}x{rgb.size[1]}", data=data, image=rgb)
    return Outcome("ok", data=data, image=rgb)


HASH_SIDE = 16  # a 256-bit perceptual hash: 64 bits cannot tell one handwritten 3 from another


def phash(image: Image.Image) -> bytes:
    return np.packbits(imagehash.phash(image, hash_size=HASH_SIDE).hash.ravel()).tobytes()


class Seen:
    """What a new image is compared with: sha256s, and perceptual hashes of the test images,
    the training images and what was kept so far. Thread-safe: check and add are one step."""

    def __init__(self, train: list[bytes], test: list[bytes], kept: pd.DataFrame, distance: int):
        self.lock, self.distance = threading.Lock(), distance
        self.sha = set(kept["sha256"])
        self.test = _hash_array(test)
        self.known = _hash_array(train + [bytes.fromhex(h) for h in kept["phash"]])

    def judge(self, sha: str, hashed: bytes) -> str:
        with self.lock:
            if sha in self.sha:
                return "duplicate"
            if _nearest(self.test, hashed) <= self.distance:
                return "test_leak"
            if _nearest(self.known, hashed) <= self.distance:
                return "near_duplicate"
            self.sha.add(sha)
            self.known = np.vstack([self.known, _hash_array([hashed])])
            return "kept"


def _hash_array(hashes: list[bytes]) -> np.ndarray:
    """(N, 32) uint8: one packed 256-bit hash per row."""
    return np.frombuffer(b"".join(hashes), dtype=np.uint8).reshape(len(hashes), HASH_SIDE**2 // 8)


def _nearest(hashes: np.ndarray, hashed: bytes) -> int:
    """The smallest Hamming distance from `hashed` to any of `hashes` (more than any if none)."""
    if not len(hashes):
        return HASH_SIDE**2 + 1
    return int(np.bitwise_count(hashes ^ np.frombuffer(hashed, dtype=np.uint8)).sum(axis=1).min())


def reference_hashes(cfg: Config, paths: Paths) -> tuple[list[bytes], list[bytes]]:
    """Perceptual hashes of the competition's training and test images."""
    data = sources.read(cfg)
    hashes = []
    for name, split in (("train", data.train), ("test", data.test)):
        images = open_images(split.images, paths.cache(name), cfg.data.cache, cfg.data.cache_limit_gb)
        hashes.append([phash(_picture(images[i])) for i in range(len(images))])
    return hashes[0], hashes[1]


def _picture(array: np.ndarray) -> Image.Image:
    """(H, W, 1 or 3) uint8 -> a PIL image."""
    array = np.asarray(array)
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


# --- the manifest ------------------------------------------------------------------------------


class Manifest:
    """extra.csv: a row per URL tried. Saved atomically every few results and at the end."""

    def __init__(self, path: Path):
        self.path, self.lock, self.unsaved = path, threading.Lock(), 0
        self.rows = pd.read_csv(path, dtype=str, keep_default_na=False).to_dict("records") if path.exists() else []
        self.index = {(r["kind"], r["url"]): i for i, r in enumerate(self.rows)}

    def settled(self, kind: str, url: str) -> bool:
        i = self.index.get((kind, url))
        return i is not None and self.rows[i]["status"] not in ("pending", "")

    def record(self, row: dict) -> None:
        with self.lock:
            row = {c: row.get(c, "") for c in COLUMNS}
            key = (row["kind"], row["url"])
            if key in self.index:
                self.rows[self.index[key]] = row
            else:
                self.index[key] = len(self.rows)
                self.rows.append(row)
            self.unsaved += 1
            if self.unsaved >= SAVE_EVERY:
                self._save()

    def save(self) -> None:
        with self.lock:
            self._save()

    def _save(self) -> None:
        write_csv(self.path, pd.DataFrame(self.rows, columns=COLUMNS))
        self.unsaved = 0

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=COLUMNS)


# --- the stage ---------------------------------------------------------------------------------


@contextlib.contextmanager
def served(folder: Path) -> Iterator[str]:
    """`folder` served over HTTP on loopback for the duration of the block; yields its base URL."""
    if not folder.is_dir():
        raise PipelineError(f"scrape.serve_gallery: {folder} does not exist (run `make data` first)")
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def run(cfg: Config) -> None:
    paths = Paths.of(cfg)
    if not cfg.scrape.sources:
        nothing_to_scrape(paths)
        return
    if cfg.competition.task != "classification":
        raise PipelineError("scraping adds labelled images: it is for classification competitions")
    gallery = served(paths.data / "gallery") if cfg.scrape.serve_gallery else contextlib.nullcontext(None)
    with gallery as base:
        counts = scrape(cfg, paths, base)
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k not in ("page", "links", "kept", "pending"))
    print(
        f"scrape: {counts['page']} pages, {counts['links']} image links, {counts['kept']} kept"
        f"{'; rejected: ' + rejected if rejected else ''} -> {paths.extra_csv}"
    )


def nothing_to_scrape(paths: Paths) -> None:
    """No sources: the stage is a no-op that leaves a manifest, so `make scrape train predict` runs
    on every competition; a manifest from earlier sources is kept, as data.use_extra decides."""
    if paths.extra_csv.exists():
        kept = int((Manifest(paths.extra_csv).frame()["status"] == "kept").sum())
        print(f"scrape: scrape.sources is empty; {paths.extra_csv} from an earlier scrape stays ({kept} images kept)")
        return
    Manifest(paths.extra_csv).save()
    print(f"scrape: scrape.sources is empty, nothing to download; an empty manifest -> {paths.extra_csv}")


def scrape(cfg: Config, paths: Paths, gallery: str | None) -> Counter:
    manifest = Manifest(paths.extra_csv)
    train, test = reference_hashes(cfg, paths)
    frame = manifest.frame()
    seen = Seen(train, test, frame[frame["status"] == "kept"], cfg.scrape.near_duplicate_distance)
    http = Http(cfg.scrape)
    try:
        for label, source in cfg.scrape.sources.items():
            links = collect_links(http, manifest, label, page_urls(source, cfg.scrape, gallery), cfg.scrape)
            work = [(label, page, url) for page, url in links if not manifest.settled("image", url)]
            with ThreadPoolExecutor(cfg.scrape.workers) as pool:
                jobs = pool.map(lambda job: fetch_image(http, manifest, seen, *job, cfg, paths), work)
                list(tqdm(jobs, total=len(work), desc=f"scrape {label}", leave=False, dynamic_ncols=True, disable=None))
    finally:
        manifest.save()
    result = manifest.frame()
    counts = Counter(result.loc[result["kind"] == "image", "status"])
    counts["page"] = int((result["kind"] == "page").sum())
    counts["links"] = int((result["kind"] == "image").sum())
    return counts


def collect_links(http: Http, manifest: Manifest, label: str, pages: list[str], cfg: Scrape) -> list[tuple[str, str]]:
    """(page, image URL) for the label, from its pages; a page the manifest has is not fetched again."""
    links = [(r["page"], r["url"]) for r in manifest.rows if r["kind"] == "image" and r["label"] == label]
    for page in pages:
        if manifest.settled("page", page) or not allowed(page, cfg):
            continue
        try:
            response = http.get(page)
            status = "ok" if response.status_code == 200 else "http_error"
            detail, found = f"HTTP {response.status_code}", image_links(response.text, page) if status == "ok" else []
        except requests.exceptions.Timeout:
            status, detail, found = "timeout", f"no answer in {cfg.timeout} s", []
        except requests.exceptions.RequestException as exc:
            status, detail, found = "http_error", type(exc).__name__, []
        new = [u for u in found if allowed(u, cfg) and (page, u) not in links][: max(0, cfg.max_images - len(links))]
        for url in new:
            manifest.record({"kind": "image", "label": label, "page": page, "url": url, "status": "pending"})
        manifest.record(
            {
                "kind": "page",
                "label": label,
                "page": page,
                "url": page,
                "status": status,
                "detail": f"{detail}, {len(new)} image links",
            }
        )
        links += [(page, u) for u in new]
    manifest.save()
    return list(dict.fromkeys(links))


def fetch_image(
    http: Http, manifest: Manifest, seen: Seen, label: str, page: str, url: str, cfg: Config, paths: Paths
) -> None:
    row = {"kind": "image", "label": label, "page": page, "url": url}
    outcome = download(http, url, cfg.scrape)
    if outcome.status == "downloaded":
        outcome = verify(outcome.data, cfg.scrape)
    if outcome.image is None:
        manifest.record({**row, "status": outcome.status, "detail": outcome.detail})
        return
    sha, hashed = hashlib.sha256(outcome.data).hexdigest(), phash(outcome.image)
    status = seen.judge(sha, hashed) if outcome.status == "ok" else outcome.status
    if status == "kept":
        path = f"extra/{label}/{sha[:20]}.png"
        image = outcome.image
    else:  # a thumbnail, for the report's grid of rejected images; never training data
        path = f"extra/.rejected/{status}/{sha[:20]}.png"
        image = outcome.image.copy()
        image.thumbnail((THUMBNAIL, THUMBNAIL))
    with atomic_path(paths.data / path) as tmp:
        image.save(tmp, format="PNG")
    width, height = outcome.image.size
    manifest.record(
        {
            **row,
            "status": status,
            "sha256": sha,
            "phash": hashed.hex(),
            "width": width,
            "height": height,
            "bytes": len(outcome.data),
            "path": path,
        }
    )
