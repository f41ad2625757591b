"""What a fetched page links to: every image it shows or links, parsed with BeautifulSoup."""

from urllib.parse import urlparse

from bs4 import BeautifulSoup

from pipeline.web.client import resolve

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")


def image_links(html: str | bytes, page_url: str) -> list[str]:
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
    links = [resolve(page_url, link.strip()) for link in found if link and not link.strip().startswith("data:")]
    return list(dict.fromkeys(links))


def _looks_like_image(href: str) -> bool:
    return urlparse(href).path.lower().endswith(IMAGE_SUFFIXES)
