"""The scrape stage against a real HTTP server on loopback that the tests start."""

import http.server
import io
import ipaddress
import re
import shutil
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from conftest import make_config
from PIL import Image

from pipeline.errors import PipelineError
from pipeline.paths import Paths
from pipeline.stages import report, scrape
from pipeline.web import client, pages


def smooth_image(seed: int, side: int = 64) -> Image.Image:
    """A distinctive picture: 16x16 random colours, smoothly upsampled (a stable perceptual hash)."""
    small = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((side, side), Image.BICUBIC)


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


PAGE = """<html><head><meta property="og:image" content="/img/og.png"></head><body>
<img src="img/good1.png">
<img src="{base}/img/good2.jpg">
<img src="data:image/gif;base64,R0lGOD" data-src="img/lazy.png">
<img src="img/good3.png" srcset="img/good3.png 1x, img/dup.png 2x">
<a href="img/near.jpg">near</a> <a href="img/leak.jpg">leak</a>
<a href="img/corrupt.jpg">x</a> <a href="img/truncated.png">x</a> <a href="img/html.jpg">x</a>
<a href="img/tiny.png">x</a> <a href="/flaky.png">x</a> <a href="/slow.png">x</a> <a href="/huge.png">x</a>
<a href="/missing.png">x</a> <a href="ftp://elsewhere/x.png">x</a> <a href="about.html">not an image</a>
</body></html>"""


class Site:
    """The files the loopback server serves, and a count of the requests for each path."""

    def __init__(self, test_image: Image.Image):
        good2 = smooth_image(2)
        png1 = encoded(smooth_image(1))
        self.files = {
            "/img/good1.png": png1,
            "/img/good2.jpg": encoded(good2, "JPEG", quality=95),
            "/img/lazy.png": encoded(smooth_image(3)),
            "/img/good3.png": encoded(smooth_image(4)),
            "/img/og.png": encoded(smooth_image(5)),
            "/img/dup.png": png1,
            "/img/near.jpg": encoded(good2.resize((56, 56)), "JPEG", quality=80),
            "/img/leak.jpg": encoded(test_image.resize((52, 52)), "JPEG", quality=85),
            "/img/corrupt.jpg": b"\xff\xd8\xff\xe0" + bytes(np.random.default_rng(0).integers(0, 256, 500, np.uint8)),
            "/img/truncated.png": png1[: len(png1) // 2],
            "/img/html.jpg": b"<html><body>Not found</body></html>",
            "/img/tiny.png": encoded(smooth_image(6, side=8)),
            "/flaky.png": encoded(smooth_image(7)),
            "/slow.png": encoded(smooth_image(8)),
            "/huge.png": encoded(Image.fromarray(np.random.default_rng(9).integers(0, 256, (300, 300, 3), np.uint8))),
        }
        self.requests = Counter()
        self.lock = threading.Lock()
        self.delay = 0.0  # seconds before every answer: a slower site, for kills to land mid-scrape


def handler_for(site: Site):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            with site.lock:
                site.requests[self.path] += 1
                count = site.requests[self.path]
            if self.path == "/page.html":
                return self.reply(
                    PAGE.format(base=f"http://127.0.0.1:{self.server.server_address[1]}").encode(), "text/html"
                )
            if self.path == "/flaky.png" and count == 1:
                return self.reply(b"busy", "text/plain", status=500)
            time.sleep(site.delay)
            if self.path == "/slow.png":
                time.sleep(1.0)
            if self.path not in site.files:
                return self.reply(b"no", "text/plain", status=404)
            kind = "image/png" if self.path.endswith(".png") else "image/jpeg"
            self.reply(site.files[self.path], kind)

        def reply(self, body: bytes, kind: str, status: int = 200):
            send_reply(self, body, kind, status)

    return Handler


def send_reply(handler: http.server.BaseHTTPRequestHandler, body: bytes, kind: str, status: int = 200) -> None:
    """`body` with its Content-Type and Content-Length; a client that has hung up is no error."""
    handler.send_response(status)
    handler.send_header("Content-Type", kind)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    with SuppressDisconnect():
        handler.wfile.write(body)


class SuppressDisconnect:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        return kind is not None and issubclass(kind, (BrokenPipeError, ConnectionResetError))


@pytest.fixture
def competition(tmp_path):
    """A class-folder competition whose first test image the site serves a near-copy of."""
    folder = tmp_path / "comp"
    for label, seeds in (("a", range(100, 104)), ("b", range(200, 204))):
        (folder / "train" / label).mkdir(parents=True)
        for seed in seeds:
            smooth_image(seed).save(folder / "train" / label / f"{seed}.png")
    (folder / "test").mkdir()
    for seed in (300, 301):
        smooth_image(seed).save(folder / "test" / f"{seed}.png")
    return folder


@pytest.fixture
def site(competition):
    site = Site(Image.open(competition / "test" / "300.png").convert("RGB"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_for(site))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    site.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield site
    server.shutdown()
    server.server_close()


def config(competition, site, **scrape_keys):
    keys = {
        "sources": {"a": {"pages": [f"{site.base}/page.html"]}},
        "workers": 1,
        "timeout": 0.5,
        "retries": 2,
        "backoff": 0.0,
        "min_side": 16,
        "max_bytes": 100_000,
        "rate_limit": 1000,
        "allow_private_addresses": True,  # the test site is on loopback
        **scrape_keys,
    }
    return make_config({"layout": "class_folders", "dir": str(competition), "sample_submission": None}, scrape=keys)


EXPECTED = {
    "img/good1.png": "kept",
    "img/good2.jpg": "kept",
    "img/lazy.png": "kept",
    "img/good3.png": "kept",
    "img/dup.png": "duplicate",
    "img/near.jpg": "near_duplicate",
    "img/leak.jpg": "test_leak",
    "img/corrupt.jpg": "corrupt",
    "img/truncated.png": "corrupt",
    "img/html.jpg": "not_image",
    "img/tiny.png": "too_small",
    "flaky.png": "kept",
    "slow.png": "timeout",
    "huge.png": "too_large",
    "missing.png": "http_error",
    "img/og.png": "kept",
}


def test_every_kind_of_file_ends_with_its_status(competition, site, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = config(competition, site)
    scrape.run(cfg)
    manifest = pd.read_csv(competition / "extra.csv", dtype=str, keep_default_na=False)
    images = manifest[manifest["kind"] == "image"]
    status = {url.removeprefix(site.base + "/"): s for url, s in zip(images["url"], images["status"], strict=True)}
    assert status == EXPECTED
    kept = images[images["status"] == "kept"]
    files = sorted((competition / "extra" / "a").iterdir())
    assert sorted(competition / p for p in kept["path"]) == files
    for path in files:  # nothing corrupt landed: every file decodes, RGB, named by content hash
        with Image.open(path) as image:
            image.load()
            assert image.mode == "RGB"
    assert site.requests["/flaky.png"] == 2  # the 500 was retried
    thumbnails = {p.parent.name for p in (competition / "extra" / ".rejected").rglob("*.png")}
    assert thumbnails == {"duplicate", "near_duplicate", "test_leak", "too_small"}  # decodable rejects only
    title, page = report.scrape_section(Paths.of(cfg), tmp_path)
    assert all(
        (tmp_path / name).stat().st_size > 1000 for name in ("scrape.png", "scrape_kept.png", "scrape_rejected.png")
    )
    assert "img/corrupt.jpg" in page  # never stored, listed with its reason
    out = capsys.readouterr().out
    assert "1 pages, 16 image links, 6 kept" in out and "test_leak 1" in out and "corrupt 2" in out


def test_interrupted_scrape_resumes_without_fetching_a_settled_url_twice(competition, site, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config(competition, site)
    original, calls = scrape.fetch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(scrape, "fetch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        scrape.run(cfg)
    assert not (competition / "extra.csv").exists()  # Make's target: only a finished scrape writes it
    partial = pd.read_csv(competition / "extra.progress.csv", dtype=str, keep_default_na=False)
    assert (partial["status"] == "pending").sum() > 0  # links found but not yet fetched are on record
    monkeypatch.setattr(scrape, "fetch", original)
    scrape.run(cfg)
    final = pd.read_csv(competition / "extra.csv", dtype=str, keep_default_na=False)
    images = final[final["kind"] == "image"]
    assert dict(zip(images["url"].str.removeprefix(site.base + "/"), images["status"], strict=True)) == EXPECTED
    settled = partial.loc[~partial["status"].isin(["pending", ""]), "url"].str.removeprefix(site.base)
    assert len(settled) > 5
    for path in settled:  # downloads under way at the interrupt may be fetched again; nothing settled is
        assert site.requests[path] == (2 if path == "/flaky.png" else 1), path


def test_which_near_duplicate_is_kept_does_not_depend_on_download_order(competition, site, tmp_path, monkeypatch):
    """good2.jpg comes before its near copy in the page; its download is made the slowest."""
    monkeypatch.chdir(tmp_path)
    original = scrape.download

    def good2_last(http, url, cfg, **kinds):
        if url.endswith("good2.jpg"):
            time.sleep(0.8)
        return original(http, url, cfg, **kinds)

    monkeypatch.setattr(scrape, "download", good2_last)
    scrape.run(config(competition, site, workers=4))
    images = pd.read_csv(competition / "extra.csv", dtype=str, keep_default_na=False).query("kind == 'image'")
    status = dict(zip(images["url"].str.removeprefix(site.base + "/"), images["status"], strict=True))
    assert status["img/good2.jpg"] == "kept" and status["img/near.jpg"] == "near_duplicate"
    assert status == EXPECTED


def test_only_allowed_domains_and_clear_config_errors(competition, site, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scrape.run(config(competition, site, allowed_domains=["example.com"]))
    manifest = pd.read_csv(competition / "extra.csv", dtype=str, keep_default_na=False)
    assert (manifest["kind"] == "image").sum() == 0 and site.requests["/page.html"] == 0
    with pytest.raises(PipelineError, match="serve_gallery"):
        scrape.run(config(competition, site, sources={"a": {"pages": ["{gallery}/x.html"]}}))


def test_no_sources_leave_an_empty_manifest_that_folds_read(competition, site, tmp_path, monkeypatch, capsys):
    from pipeline.stages import folds

    monkeypatch.chdir(tmp_path)
    cfg = config(competition, site, sources={})
    cfg.folds.n_splits = 2
    scrape.run(cfg)
    assert "sources is empty" in capsys.readouterr().out
    assert pd.read_csv(competition / "extra.csv").empty and sum(site.requests.values()) == 0
    folds.run(cfg)
    assert (pd.read_csv(Paths.of(cfg).folds_csv)["fold"] >= 0).all()


def test_links_from_every_kind_of_markup():
    html = """<img src="a.png"><img data-src="/b.jpg" src="data:image/gif;base64,x">
    <img srcset="c.png 1x, https://cdn.example/c2.png 2x"><picture><source data-srcset="d.webp 300w"></picture>
    <a href="e.JPG">e</a><a href="page2.html">next</a><meta property="og:image" content="//cdn.example/f.png">"""
    assert pages.image_links(html, "http://site.example/gallery/index.html") == [
        "http://site.example/gallery/a.png",
        "http://site.example/b.jpg",
        "http://site.example/gallery/c.png",
        "https://cdn.example/c2.png",
        "http://site.example/gallery/d.webp",
        "http://site.example/gallery/e.JPG",
        "http://cdn.example/f.png",
    ]


def test_scraped_images_join_training_with_fold_minus_one(competition, site, tmp_path, monkeypatch):
    from pipeline.stages import folds

    monkeypatch.chdir(tmp_path)
    cfg = config(competition, site)
    cfg.folds.n_splits = 2
    scrape.run(cfg)
    folds.run(cfg)
    table = pd.read_csv(Paths.of(cfg).folds_csv)
    extra = table[table["fold"] == -1]
    assert len(extra) == 6 and set(extra["label"]) == {"a"} and extra["id"].str.startswith("extra/a/").all()
    cfg.data.use_extra = False
    folds.run(cfg)
    assert (pd.read_csv(Paths.of(cfg).folds_csv)["fold"] == -1).sum() == 0


def test_decompression_bomb_is_refused_from_its_header():
    bomb = encoded(Image.new("RGB", (2000, 2000)))  # a few kB of PNG, 4 million pixels decoded
    cfg = make_config({"layout": "class_folders", "dir": "."}, scrape={"max_pixels": 1_000_000}).scrape
    outcome = scrape.verify(bomb, cfg)
    assert outcome.status == "too_large" and "2000x2000" in outcome.detail and len(bomb) < 50_000


# --- a hostile server: every case ends in its named manifest status ----------------------------

HOSTILE_PAGE = """<html><body>
<a href="/r/same.png">x</a> <a href="/r/cross-host.png">x</a> <a href="/r/metadata.png">x</a>
<a href="/r/scheme.png">x</a> <a href="/r/loop.png">x</a> <a href="/endless.png">x</a> <a href="/lying.png">x</a>
<a href="/drip.png">x</a> <a href="/html-as.png">x</a> <a href="/flaky.png">x</a>
<a href="/bad-length.png">x</a> <img src="http://[::1">
</body></html>"""

HOSTILE = {  # case -> (the URL's path, the status it must end in)
    "redirect on the same host": ("/r/same.png", "kept"),
    "redirect to another host": ("/r/cross-host.png", "refused"),
    "redirect to a cloud-metadata address": ("/r/metadata.png", "refused"),
    "redirect to another scheme": ("/r/scheme.png", "refused"),
    "redirect loop": ("/r/loop.png", "too_many_redirects"),
    "endless body": ("/endless.png", "too_large"),
    "lying Content-Length": ("/lying.png", "http_error"),
    "slow drip": ("/drip.png", "timeout"),
    "HTML served as image/png": ("/html-as.png", "not_image"),
    "a 500 that succeeds on retry": ("/flaky.png", "kept"),
    "a moved page's relative link": ("/sub/pic.png", "kept"),
    "a Content-Length that is not a number": ("/bad-length.png", "http_error"),
    "a link that does not parse": ("http://[::1", "bad_url"),
}


def hostile_handler(requests: Counter):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            requests[self.path] += 1
            port = self.server.server_address[1]
            redirects = {
                "/r/same.png": "/img/same.png",
                "/r/cross-host.png": f"http://localhost:{port}/img/cross.png",
                "/r/metadata.png": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
                "/r/scheme.png": "file:///etc/passwd",
                "/r/loop.png": "/r/loop.png",
                "/moved": "/sub/index.html",
            }
            with SuppressDisconnect():
                if self.path in redirects:
                    self.send_response(302)
                    self.send_header("Location", redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path in ("/hostile.html", "/sub/index.html"):
                    self.reply(HOSTILE_PAGE.encode() if self.path == "/hostile.html" else b'<img src="pic.png">')
                elif self.path == "/flaky.png" and requests[self.path] == 1:
                    self.reply(b"busy", status=500)
                else:
                    self.image()

        def image(self):
            body = encoded(smooth_image(sum(map(ord, self.path))))
            if self.path == "/html-as.png":
                return self.reply(b"<html>Not found</html>", "image/png")
            if self.path == "/lying.png":
                return self.reply(body[:100], "image/png", length=len(body))
            if self.path == "/bad-length.png":
                return self.reply(body, "image/png", length="many")
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            if self.path in ("/endless.png", "/drip.png", "/endless.html"):  # no length: read until it stops
                self.end_headers()
                drip = self.path == "/drip.png"
                while True:
                    self.wfile.write(b"x" * (1 if drip else 65536))
                    self.wfile.flush()
                    time.sleep(0.05 if drip else 0.0)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def reply(self, body: bytes, kind: str = "text/html", status: int = 200, length: int | str | None = None):
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(length or len(body)))
            self.end_headers()
            self.wfile.write(body)
            if length:
                self.close_connection = True

    return Handler


def test_hostile_servers_end_in_their_named_status_and_redirects_obey_the_rules(competition, tmp_path, monkeypatch):
    """The server is trusted as the demo's gallery is, by its origin; loopback under any other
    name (localhost) is then a private address, and refused."""
    monkeypatch.chdir(tmp_path)
    requests = Counter()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), hostile_handler(requests))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    cfg = make_config(
        {"layout": "class_folders", "dir": str(competition), "sample_submission": None},
        scrape={
            "sources": {"a": {"pages": ["{gallery}/hostile.html", "{gallery}/moved", "{gallery}/endless.html"]}},
            "timeout": 0.5,
            "download_s": 1.0,
            "max_bytes": 1_000_000,
            "backoff": 0.0,
            "rate_limit": 1000,
            "min_side": 16,
        },
    )
    try:
        scrape.scrape(cfg, Paths.of(cfg), base)
    finally:
        server.shutdown()
        server.server_close()
    manifest = pd.read_csv(competition / "extra.csv", dtype=str, keep_default_na=False)
    pages = manifest.query("kind == 'page'")
    assert dict(zip(pages["url"].str.removeprefix("{gallery}"), pages["status"], strict=True)) == {
        "/hostile.html": "ok",
        "/moved": "ok",
        "/endless.html": "too_large",  # a page is read with an image's caps
    }
    images = manifest.query("kind == 'image'")
    observed = dict(zip(images["url"].str.removeprefix("{gallery}"), images["status"], strict=True))
    assert {case: observed[path] for case, (path, _) in HOSTILE.items()} == {c: s for c, (_, s) in HOSTILE.items()}
    final = dict(zip(images["url"].str.removeprefix("{gallery}"), images["final_url"], strict=True))
    assert final["/r/same.png"] == "{gallery}/img/same.png"
    assert requests["/img/cross.png"] == 0 and requests["/r/loop.png"] == 6  # the first hop and 5 redirects
    assert not list((competition / "extra").rglob("cross.png"))


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://169.254.169.254/latest/meta-data/", "is a private address (169.254.169.254)"),
        ("http://10.1.2.3/x.png", "is a private address"),
        ("http://[::1]:8000/x.png", "is a private address (::1)"),
        ("http://127.0.0.1:9/x.png", "is a private address"),
        ("http://100.100.100.200/latest/meta-data/", "(100.100.100.200)"),  # carrier-grade NAT: Alibaba's
        ("http://192.0.0.192/opc/v2/instance/", "(192.0.0.192)"),  # IETF protocol assignments: Oracle's
        ("http://[2002:a9fe:a9fe::1]/x.png", "is a private address (2002:a9fe:a9fe::1)"),  # 6to4 of 169.254.169.254
        ("http://[::ffff:10.0.0.1]/x.png", "is a private address"),  # IPv4-mapped
        ("http://[64:ff9b::a9fe:a9fe]/x.png", "is a private address"),  # NAT64 of 169.254.169.254
        ("http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/x.png", "is a private address"),  # Teredo, client 10.0.0.1
        ("ftp://93.184.216.34/x.png", "not an http(s) URL"),
        ("https://93.184.216.34/x.png", None),
        ("https://[2002:808:808::1]/x.png", None),  # 6to4 of a public address
        ("https://[64:ff9b::808:808]/x.png", None),  # NAT64 of a public address
    ],
)
def test_the_policy_refuses_every_address_but_a_global_one_and_other_schemes(url, refused):
    policy = client.Policy(domains=(), private_ok=False, trusted=("http://127.0.0.1:8000",))
    if refused is None:
        policy.check(url)
    else:
        with pytest.raises(client.Refused, match=re.escape(refused)):
            policy.check(url)
    policy.check("http://127.0.0.1:8000/gallery/a.png")  # the demo's own gallery, by its origin


def https_site(site: Site, folder) -> str:
    """The site's files over TLS, with a self-signed certificate for 127.0.0.1 that requests
    trusts through REQUESTS_CA_BUNDLE; its base URL."""
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_for(site))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"https://127.0.0.1:{server.server_address[1]}"


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_host_that_rebinds_to_a_private_address_is_refused_at_connect(scheme, site, tmp_path, monkeypatch):
    """The policy's DNS answer is public, the connection's is loopback (a rebinding server):
    the connection refuses its peer before it sends a request."""
    if scheme == "https" and not shutil.which("openssl"):
        pytest.skip("the openssl command makes the test certificate")
    base = https_site(site, tmp_path) if scheme == "https" else site.base
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "cert.pem"))
    monkeypatch.setattr(client, "addresses", lambda host: (ipaddress.ip_address("93.184.216.34"),))
    cfg = make_config({"layout": "class_folders", "dir": "."}).scrape
    outcome = scrape.download(
        client.Http(cfg, client.Policy(domains=(), private_ok=False)), f"{base}/img/good1.png", cfg
    )
    assert outcome.status == "refused" and "connected to a private address (127.0.0.1)" in outcome.detail
    assert site.requests["/img/good1.png"] == 0
    allowed = client.Policy(domains=(), private_ok=False, trusted=(base,))
    assert scrape.download(client.Http(cfg, allowed), f"{base}/img/good1.png", cfg).status == "downloaded"


def test_a_scraped_16_bit_image_is_scaled_like_a_competition_one():
    grey = Image.fromarray(np.full((40, 40), 32768, dtype=np.uint16))
    cfg = make_config({"layout": "class_folders", "dir": "."}, scrape={"min_side": 16}).scrape
    outcome = scrape.verify(encoded(grey), cfg)
    assert outcome.status == "ok" and outcome.image.getpixel((0, 0)) == (128, 128, 128)


@pytest.fixture
def proxy():
    """An HTTP proxy on loopback that forwards GETs of absolute URLs; yields its URL and a count
    of the URLs it forwarded."""
    forwarded = Counter()
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            forwarded[self.path] += 1
            try:
                with direct.open(self.path, timeout=5) as answer:
                    status, kind, body = answer.status, answer.headers.get("Content-Type", ""), answer.read()
            except urllib.error.HTTPError as error:
                status, kind, body = error.code, "text/plain", error.read()
            send_reply(self, body, kind, status)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", forwarded
    server.shutdown()
    server.server_close()


def test_a_proxy_from_the_environment_is_refused_unless_scrape_proxy_names_it(
    competition, site, proxy, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    address, forwarded = proxy
    monkeypatch.setenv("HTTP_PROXY", address.replace("http://", "http://user:secret@"))
    expected = r"^HTTP_PROXY is set \(http://127\.0\.0\.1:\d+\) but scrape\.proxy is not: .* unset HTTP_PROXY$"
    with pytest.raises(PipelineError, match=expected) as refused:
        scrape.run(config(competition, site))
    assert "secret" not in str(refused.value) and "\n" not in str(refused.value)
    assert not (competition / "extra.progress.csv").exists() and sum(site.requests.values()) == 0
    scrape.run(config(competition, site, proxy=address))
    images = pd.read_csv(competition / "extra.csv", dtype=str, keep_default_na=False).query("kind == 'image'")
    assert dict(zip(images["url"].str.removeprefix(site.base + "/"), images["status"], strict=True)) == EXPECTED
    assert sum(forwarded.values()) == sum(site.requests.values()) > 0  # every request went through it


def test_through_a_proxy_the_target_address_is_checked_before_the_request(site, proxy, monkeypatch):
    """The proxied connection's peer is the proxy (here on loopback, and allowed); the target's
    address is what the policy checks, and a target that does not resolve here is refused."""
    address, forwarded = proxy
    cfg = make_config({"layout": "class_folders", "dir": "."}, scrape={"proxy": address}).scrape
    http = client.Http(cfg, client.Policy.of(cfg))
    outcome = scrape.download(http, f"{site.base}/img/good1.png", cfg)
    assert outcome.status == "refused" and "is a private address (127.0.0.1)" in outcome.detail
    monkeypatch.setattr(client, "addresses", lambda host: ())
    outcome = scrape.download(http, "http://nowhere.invalid/x.png", cfg)
    assert outcome.status == "refused" and "does not resolve here" in outcome.detail
    assert sum(forwarded.values()) == 0
    monkeypatch.setattr(client, "addresses", lambda host: (ipaddress.ip_address("93.184.216.34"),))
    assert scrape.download(http, f"{site.base}/img/good1.png", cfg).status == "downloaded"
    assert forwarded[f"{site.base}/img/good1.png"] == 1


def test_a_resumed_gallery_scrape_names_its_urls_by_the_gallery_not_its_port(competition, site, tmp_path, monkeypatch):
    """The demo gallery is served on a new port each run: its rows still settle its URLs."""
    monkeypatch.chdir(tmp_path)
    cfg = config(competition, site, sources={"a": {"pages": ["{gallery}/page.html"]}}, allow_private_addresses=False)
    first = scrape.scrape(cfg, Paths.of(cfg), site.base)
    fetched = sum(site.requests.values())
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_for(site))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        second = scrape.scrape(cfg, Paths.of(cfg), f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
    assert second == first and sum(site.requests.values()) == fetched
    images = pd.read_csv(competition / "extra.csv", dtype=str, keep_default_na=False).query("kind == 'image'")
    assert dict(zip(images["url"].str.removeprefix("{gallery}/"), images["status"], strict=True)) == EXPECTED
