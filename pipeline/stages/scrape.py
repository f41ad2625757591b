"""The scrape stage, the crawler: extra training images per label, with corrupt files, duplicates
and copies of test images kept out.

Pages are fetched through the guarded client (web.client: rate limits, retries, every redirect
hop and every connection's peer checked against the address policy) and parsed for image links
(web.pages). Every image link found is recorded in the progress manifest as
soon as its page is parsed, then downloaded (streamed, capped in bytes and time, content-type
checked), fully decoded and, in link order, compared by sha256 and perceptual hash with what is
already kept, with the training images and with the test images. Kept images are stored as RGB
PNGs named by content hash under `data/<name>/extra/<label>/`; decodable rejects (duplicates,
leaks, too small) only as thumbnails under `extra/.rejected/<status>/`, for the report;
undecodable files nowhere. A re-run skips every URL the progress manifest already settled, so an
interrupted scrape loses nothing; `data/<name>/extra.csv` is written only when the stage
finishes.
"""

import contextlib
import dataclasses
import hashlib
import io
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import getproxies

import pandas as pd
import requests
import urllib3
import urllib3.connection
from PIL import Image
from tqdm import tqdm

from pipeline import tasks
from pipeline.config import Config, Scrape
from pipeline.data import sources
from pipeline.data.demo_site import served
from pipeline.data.images import eight_bit
from pipeline.data.near_duplicates import Seen, phash, picture
from pipeline.errors import PipelineError
from pipeline.files import atomic_path, write_csv
from pipeline.learn.defaults import working_side
from pipeline.paths import Paths
from pipeline.web.client import GALLERY, Http, Policy, Refused
from pipeline.web.pages import image_links

COLUMNS = ["kind", "label", "page", "url", "final_url", "status", "detail", "sha256", "phash", "width", "height"]
COLUMNS += ["bytes", "path"]
SAVE_EVERY = 25  # results between manifest writes
THUMBNAIL = 96  # side of the stored thumbnail of a decodable but rejected image


# --- pages -------------------------------------------------------------------------------------


def page_urls(source, cfg: Scrape, *, gallery_served: bool) -> list[str]:
    pages = list(source.pages)
    if GALLERY in "".join(pages) and not gallery_served:
        raise PipelineError(f"scrape.sources uses {GALLERY}, but scrape.serve_gallery is off")
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
    final_url: str = ""  # where the redirects ended
    sha256: str = ""  # of the downloaded bytes, once decoded
    phash: bytes = b""  # perceptual hash of the decoded image


def download(http: Http, url: str, cfg: Scrape, *, image: bool = True) -> Outcome:
    """The body at `url` (a result page, or an image whose Content-Type must say so), streamed,
    capped in bytes and in time, or why not; its final_url is where the redirects ended."""
    try:
        with http.get(url, stream=True) as response:
            final = http.named(response.url)
            if response.status_code != 200:
                return Outcome("http_error", f"HTTP {response.status_code}", final_url=final)
            kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if image and kind and not kind.startswith("image/"):
                return Outcome("not_image", f"Content-Type {kind}", final_url=final)
            if (content_length(response) or 0) > cfg.max_bytes:
                return Outcome("too_large", f"{response.headers['Content-Length']} bytes", final_url=final)
            return dataclasses.replace(_body(response, cfg), final_url=final)
    except Refused as refused:
        return Outcome(refused.status, refused.detail)
    except requests.exceptions.Timeout:
        return Outcome("timeout", f"no answer in {cfg.timeout} s")
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
        return Outcome("http_error", type(exc).__name__)


def _body(response: requests.Response, cfg: Scrape) -> Outcome:
    """read1 returns what one socket read brings, so the deadline is checked however slowly the
    body drips (each read waits at most scrape.timeout)."""
    deadline, body = time.monotonic() + cfg.download_s, io.BytesIO()
    while chunk := response.raw.read1(64 * 1024, decode_content=True):
        body.write(chunk)
        if body.tell() > cfg.max_bytes:
            return Outcome("too_large", f"over {cfg.max_bytes} bytes")
        if time.monotonic() > deadline:
            return Outcome("timeout", f"not downloaded in scrape.download_s={cfg.download_s:g} s")
    announced = content_length(response)
    if announced is not None and "Content-Encoding" not in response.headers and announced != body.tell():
        return Outcome("http_error", f"{body.tell()} bytes where Content-Length said {announced}")
    return Outcome("downloaded", data=body.getvalue())


def content_length(response: requests.Response) -> int | None:
    """The body's length the response announces, None when it announces none; Refused
    (http_error) when what it announces is not a byte count."""
    announced = response.headers.get("Content-Length")
    if announced is None:
        return None
    if not re.fullmatch(r"[0-9]+", announced.strip()):  # int() would take "1_000", "+5" and Unicode digits
        raise Refused("http_error", f"{response.url}: Content-Length {announced!r} is not a byte count")
    return int(announced)


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
            rgb = eight_bit(image).convert("RGB")
    except Image.DecompressionBombError as exc:  # Pillow's own, larger limit
        return Outcome("too_large", str(exc).split(".")[0])
    except Image.UnidentifiedImageError:
        return Outcome("not_image", "not an image format")
    except (OSError, SyntaxError, ValueError) as exc:
        return Outcome("corrupt", str(exc)[:120])
    if min(rgb.size) < cfg.min_side:
        return Outcome("too_small", f"{rgb.size[0]}x{rgb.size[1]}", data=data, image=rgb)
    return Outcome("ok", data=data, image=rgb)


def reference_hashes(cfg: Config, paths: Paths) -> tuple[list[bytes], list[bytes]]:
    """Perceptual hashes of the competition's training and test images."""
    data = sources.read(cfg)
    hashes = []
    for name, split in (("train", data.train), ("test", data.test)):
        images = sources.open_split(cfg, split.images, paths.cache(name), working_side(cfg))
        hashes.append([phash(picture(images[i])) for i in range(len(images))])
    return hashes[0], hashes[1]


# --- the manifest ------------------------------------------------------------------------------


class Manifest:
    """A row per URL tried, saved atomically every few results to the progress file (which a
    re-run resumes from), and to extra.csv once the stage has finished."""

    def __init__(self, path: Path, resume_from: Path | None = None):
        """Saved to `path`, starting from the rows in `resume_from` (default `path`)."""
        source = resume_from or path
        self.path, self.unsaved = path, 0
        self.rows = pd.read_csv(source, dtype=str, keep_default_na=False).to_dict("records") if source.exists() else []
        self.index = {(r["kind"], r["url"]): i for i, r in enumerate(self.rows)}

    @classmethod
    def resumed(cls, paths: Paths) -> "Manifest":
        """The scrape so far: the progress file, else the last finished scrape's extra.csv."""
        progress = paths.scrape_progress
        return cls(progress, resume_from=progress if progress.exists() else paths.extra_csv)

    def settled(self, kind: str, url: str) -> bool:
        i = self.index.get((kind, url))
        return i is not None and self.rows[i]["status"] not in ("pending", "")

    def record(self, row: dict) -> None:
        row = {c: row.get(c, "") for c in COLUMNS}
        key = (row["kind"], row["url"])
        if key in self.index:
            self.rows[self.index[key]] = row
        else:
            self.index[key] = len(self.rows)
            self.rows.append(row)
        self.unsaved += 1
        if self.unsaved >= SAVE_EVERY:
            self.save()

    def save(self) -> None:
        self.save_as(self.path)
        self.unsaved = 0

    def save_as(self, path: Path) -> None:
        """The whole manifest at `path`, written at once (extra.csv: the finished stage's target)."""
        write_csv(path, self.frame())

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=COLUMNS)


# --- the stage ---------------------------------------------------------------------------------


def run(cfg: Config) -> None:
    paths = Paths.of(cfg)
    if not cfg.scrape.sources:
        nothing_to_scrape(paths)
        return
    task = tasks.get(cfg.competition.task)
    if not task.takes_extra_images:
        raise PipelineError(f"scraping adds images labelled with a class, which a {task.name} competition cannot use")
    refuse_environment_proxy(cfg.scrape)
    gallery = served(paths.data / "gallery") if cfg.scrape.serve_gallery else contextlib.nullcontext(None)
    with gallery as base:
        counts = scrape(cfg, paths, base)
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k not in ("page", "links", "kept", "pending"))
    print(
        f"scrape: {counts['page']} pages, {counts['links']} image links, {counts['kept']} kept"
        f"{'; rejected: ' + rejected if rejected else ''} -> {paths.extra_csv}"
    )


def refuse_environment_proxy(cfg: Scrape) -> None:
    """A proxy from the environment is refused unless scrape.proxy names it: the scrape would
    otherwise bypass it, and through it the connections' peers cannot be checked."""
    beyond_gallery = [p for s in cfg.sources.values() for p in [*s.pages, s.search or ""] if p and GALLERY not in p]
    found = {k: v for k, v in getproxies().items() if k in ("http", "https", "all")}
    if found and beyond_gallery and cfg.proxy is None:
        scheme, proxy = next(iter(found.items()))
        parts = urlparse(proxy)
        shown = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"  # no credentials
        raise PipelineError(
            f"{scheme.upper()}_PROXY is set ({shown}) but scrape.proxy is not: the scrape fetches through"
            f" no proxy it was not given; set scrape.proxy to fetch through it, or unset {scheme.upper()}_PROXY"
        )


def nothing_to_scrape(paths: Paths) -> None:
    """No sources: the stage is a no-op that leaves a manifest, so `make scrape train predict` runs
    on every competition; a manifest from earlier sources is kept, as data.use_extra decides."""
    if paths.extra_csv.exists():
        kept = int((Manifest(paths.extra_csv).frame()["status"] == "kept").sum())
        print(f"scrape: scrape.sources is empty; {paths.extra_csv} from an earlier scrape stays ({kept} images kept)")
        return
    Manifest(paths.extra_csv).save_as(paths.extra_csv)
    print(f"scrape: scrape.sources is empty, nothing to download; an empty manifest -> {paths.extra_csv}")


def scrape(cfg: Config, paths: Paths, gallery: str | None) -> Counter:
    """Every label's pages, then its images. Downloads run in parallel, but each image is judged
    against what was kept in link order, so a scrape keeps the same set whatever order the
    downloads end in, and an interrupted one resumes to the same set. extra.csv is written last."""
    manifest = Manifest.resumed(paths)
    train, test = reference_hashes(cfg, paths)
    frame = manifest.frame()
    seen = Seen(train, test, frame[frame["status"] == "kept"], cfg.scrape.near_duplicate_distance)
    http = Http(cfg.scrape, Policy.of(cfg.scrape, gallery), gallery)
    try:
        for label, source in cfg.scrape.sources.items():
            pages = page_urls(source, cfg.scrape, gallery_served=gallery is not None)
            links = collect_links(http, manifest, label, pages, cfg.scrape)
            work = [(page, url) for page, url in links if not manifest.settled("image", url)]
            fetch_all(http, manifest, seen, label, work, cfg.scrape, paths)
    finally:
        manifest.save()
    manifest.save_as(paths.extra_csv)
    result = manifest.frame()
    counts = Counter(result.loc[result["kind"] == "image", "status"])
    counts["page"] = int((result["kind"] == "page").sum())
    counts["links"] = int((result["kind"] == "image").sum())
    return counts


def fetch_all(
    http: Http, manifest: Manifest, seen: Seen, label: str, work: list[tuple[str, str]], cfg: Scrape, paths: Paths
) -> None:
    """Download (page, url) pairs in parallel; settle each in their order."""
    with ThreadPoolExecutor(cfg.workers) as pool:
        try:
            outcomes = pool.map(lambda job: fetch(http, job[1], cfg), work)
            bar = tqdm(outcomes, total=len(work), desc=f"scrape {label}", leave=False, disable=None)
            for (page, url), outcome in zip(work, bar, strict=True):
                settle(manifest, seen, {"kind": "image", "label": label, "page": page, "url": url}, outcome, paths)
        except BaseException:
            pool.shutdown(cancel_futures=True)  # an interrupt stops at the downloads under way
            raise


def collect_links(http: Http, manifest: Manifest, label: str, pages: list[str], cfg: Scrape) -> list[tuple[str, str]]:
    """(page, image URL) for the label, from its pages; a page the manifest has is not fetched again.
    Links resolve against the page's final URL, after its redirects."""
    links = [(r["page"], r["url"]) for r in manifest.rows if r["kind"] == "image" and r["label"] == label]
    for page in pages:
        if manifest.settled("page", page) or not http.policy.on_domain(http.real(page)):
            continue
        status, detail, final, found = fetch_page(http, page, cfg)
        new = [u for u in found if http.policy.on_domain(http.real(u)) and (page, u) not in links]
        new = new[: max(0, cfg.max_images - len(links))]
        for url in new:
            manifest.record({"kind": "image", "label": label, "page": page, "url": url, "status": "pending"})
        row = {"kind": "page", "label": label, "page": page, "url": page, "final_url": final, "status": status}
        manifest.record({**row, "detail": f"{detail}, {len(new)} image links"})
        links += [(page, u) for u in new]
    manifest.save()
    return list(dict.fromkeys(links))


def fetch_page(http: Http, page: str, cfg: Scrape) -> tuple[str, str, str, list[str]]:
    """(status, detail, final URL, image links) of one result page, read with the caps of an image."""
    body = download(http, page, cfg, image=False)
    if body.status != "downloaded":
        return body.status, body.detail, body.final_url, []
    # bytes: BeautifulSoup finds the charset, as requests' .text would have guessed it
    links = image_links(body.data, http.real(body.final_url))
    return "ok", "HTTP 200", body.final_url, [http.named(link) for link in links]


def fetch(http: Http, url: str, cfg: Scrape) -> Outcome:
    """An image URL downloaded, fully decoded and hashed, or why not (in a worker thread: no
    shared state)."""
    outcome = download(http, url, cfg)
    if outcome.status != "downloaded":
        return outcome
    verified = verify(outcome.data, cfg)
    if verified.image is None:
        return dataclasses.replace(verified, final_url=outcome.final_url)
    sha, hashed = hashlib.sha256(verified.data).hexdigest(), phash(verified.image)
    return dataclasses.replace(verified, final_url=outcome.final_url, sha256=sha, phash=hashed)


def settle(manifest: Manifest, seen: Seen, row: dict, outcome: Outcome, paths: Paths) -> None:
    """Judge a fetched image against what was kept (in link order), store it and record it."""
    row = {**row, "final_url": outcome.final_url}
    if outcome.image is None:
        manifest.record({**row, "status": outcome.status, "detail": outcome.detail})
        return
    sha, hashed = outcome.sha256, outcome.phash
    status = seen.judge(sha, hashed) if outcome.status == "ok" else outcome.status
    if status == "kept":
        path = f"extra/{row['label']}/{sha[:20]}.png"
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
