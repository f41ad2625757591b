"""The guarded HTTP client, the only code that talks to the web: one requests Session per thread
with timeouts, retries with backoff on 429 and 5xx, a User-Agent and a per-host rate limit;
redirects followed by hand so that every hop is checked against the domain rules and the
address policy (only what `ipaddress` calls global, with the IPv4 address inside 6to4, Teredo
and IPv4-mapped addresses checked too), and each connection's peer checked again; through
scrape.proxy when one is set, and never through the environment's."""

import functools
import ipaddress
import os
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlparse

import requests
import urllib3
import urllib3.connection
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from pipeline.config import Scrape

GALLERY = "{gallery}"  # a served local gallery's origin, as scrape.sources and the manifest name it


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


class Refused(Exception):
    """A URL the scrape does not fetch, with its manifest status and why."""

    def __init__(self, status: str, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


# IETF protocol assignments, not globally reachable (Oracle Cloud's metadata service is 192.0.0.192),
# though the ipaddress of Pythons before 3.11.10 calls them global
NOT_GLOBAL_IPV4 = ipaddress.IPv4Network("192.0.0.0/24")
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # the last 32 bits are an IPv4 address


def blocked(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether the scrape refuses to reach `address`: an allow-list, since a block-list missed
    carrier-grade NAT (Alibaba Cloud's metadata service is 100.100.100.200). Only what ipaddress
    calls global passes, and an IPv6 address that carries an IPv4 one (IPv4-mapped, 6to4, Teredo,
    NAT64) only when that one passes too."""
    if not address.is_global or (address.version == 4 and address in NOT_GLOBAL_IPV4):
        return True
    return any(blocked(inner) for inner in embedded_ipv4(address))


def embedded_ipv4(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    if address.version == 4:
        return []
    inner = [address.ipv4_mapped, address.sixtofour, *(address.teredo or ())]
    if address in NAT64:
        inner.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return [a for a in inner if a is not None]


@functools.lru_cache(maxsize=1024)
def addresses(host: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    try:
        return tuple({ipaddress.ip_address(info[4][0].split("%")[0]) for info in socket.getaddrinfo(host, None)})
    except (socket.gaierror, UnicodeError):
        return ()  # the request itself then fails, and says so


@dataclass(frozen=True)
class Policy:
    """What may be fetched, checked at every redirect hop: http(s) only, on scrape.allowed_domains,
    and never a loopback, private or link-local address (a cloud metadata service) unless
    scrape.allow_private_addresses. `trusted`: origins fetched regardless, the demo's own gallery.
    `proxied`: fetches go through scrape.proxy, so a host must resolve here to be checked."""

    domains: tuple[str, ...]
    private_ok: bool
    trusted: tuple[str, ...] = ()
    proxied: bool = False

    @classmethod
    def of(cls, cfg: Scrape, gallery: str | None = None) -> "Policy":
        trusted = (gallery,) if gallery else ()
        return cls(tuple(cfg.allowed_domains), cfg.allow_private_addresses, trusted, proxied=cfg.proxy is not None)

    def on_domain(self, url: str) -> bool:
        """The scheme and domain rules alone: a link worth recording (one that does not parse is,
        to be refused as bad_url)."""
        if self.trusts(url):
            return True
        try:
            parts = urlparse(url)
        except ValueError:
            return True
        if parts.scheme not in ("http", "https"):
            return False
        host = parts.hostname or ""
        return not self.domains or any(host == d or host.endswith(f".{d}") for d in self.domains)

    def check(self, url: str) -> None:
        """Raise Refused unless `url` may be fetched."""
        try:
            urlparse(url).port  # noqa: B018 (the port is parsed on reading it)
        except ValueError as exc:
            raise Refused("bad_url", f"{url}: {exc}") from None
        if self.trusts(url):
            return
        if not self.on_domain(url):
            raise Refused("refused", f"{url}: not an http(s) URL on scrape.allowed_domains")
        if self.private_ok:
            return
        host = urlparse(url).hostname or ""
        found = addresses(host)
        private = [a for a in found if blocked(a)]
        if private:
            raise Refused(
                "refused", f"{url}: {host} is a private address ({private[0]}), see scrape.allow_private_addresses"
            )
        if not found and self.proxied:
            raise Refused("refused", f"{url}: {host} does not resolve here, so its address cannot be checked")

    def guards_connections(self, url: str) -> bool:
        """Whether the connection to `url` must itself refuse a private peer (a proxied one cannot:
        its peer is the proxy, and `check` has checked the target's address before the request)."""
        return not self.private_ok and not self.trusts(url) and not self.proxied

    def trusts(self, url: str) -> bool:
        return any(url.startswith(origin + "/") for origin in self.trusted)


class PublicPeer:
    """A connection that refuses a private peer once connected, before it sends a request. The
    address checked is the one reached: a DNS answer that changed since Policy.check resolved
    the host (rebinding) is caught here."""

    def connect(self) -> None:
        super().connect()
        peer = ipaddress.ip_address(self.sock.getpeername()[0].split("%")[0])
        if blocked(peer):
            self.close()
            raise Refused(
                "refused", f"{self.host} connected to a private address ({peer}), see scrape.allow_private_addresses"
            )


class PublicHTTPConnection(PublicPeer, urllib3.connection.HTTPConnection):
    pass


class PublicHTTPSConnection(PublicPeer, urllib3.connection.HTTPSConnection):
    pass


class PublicHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = PublicHTTPConnection


class PublicHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = PublicHTTPSConnection


class PublicAdapter(HTTPAdapter):
    """requests' adapter whose direct connections are PublicPeers (a proxy's are not: the proxy
    resolves the host)."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": PublicHTTPPool, "https": PublicHTTPSPool}


class Http:
    """requests Sessions, one per thread and kind, with retries, timeouts, the rate limit, and
    redirects followed by hand so that the policy sees every hop; connections refuse a private
    peer unless the policy allows it or trusts the origin. Every fetch but the gallery's goes
    through scrape.proxy when one is set, and through no proxy of the environment's.

    URLs under the served `gallery` are named by GALLERY in place of its origin, whose port
    changes from run to run: `real` is the URL fetched, `named` the one the manifest keys."""

    def __init__(self, cfg: Scrape, policy: Policy, gallery: str | None = None):
        self.cfg, self.policy, self.limit, self.local = cfg, policy, RateLimit(cfg.rate_limit), threading.local()
        self.gallery = gallery

    def real(self, url: str) -> str:
        return self.gallery + url[len(GALLERY) :] if self.gallery and url.startswith(GALLERY + "/") else url

    def named(self, url: str) -> str:
        return GALLERY + url[len(self.gallery) :] if self.gallery and url.startswith(self.gallery + "/") else url

    def session(self, url: str) -> requests.Session:
        proxy = None if self.policy.trusts(url) else self.cfg.proxy
        guarded = self.policy.guards_connections(url)
        name = f"session {proxy} {guarded}"
        if not hasattr(self.local, name):
            # read=False: a server too slow once is too slow again; its timeout is reported as one
            retry = Retry(
                total=self.cfg.retries,
                read=False,
                redirect=False,
                backoff_factor=self.cfg.backoff,
                status_forcelist=(429, 500, 502, 503, 504),
                allowed_methods=("GET",),
                respect_retry_after_header=True,
                raise_on_status=False,
            )
            session = requests.Session()
            # the environment's proxies would win over session.proxies, and its .netrc would send
            # credentials to scraped hosts; its CA bundle is still the one verified against
            session.trust_env = False
            session.proxies = {"http": proxy, "https": proxy} if proxy else {}
            session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
            adapter = PublicAdapter if guarded else HTTPAdapter
            session.mount("http://", adapter(max_retries=retry))
            session.mount("https://", adapter(max_retries=retry))
            session.headers["User-Agent"] = self.cfg.user_agent
            setattr(self.local, name, session)
        return getattr(self.local, name)

    def get(self, url: str, stream: bool = False) -> requests.Response:
        """The response at the end of `url`'s redirects (its .url is the final URL); Refused when
        a hop breaks the policy or there are more than scrape.max_redirects."""
        url = self.real(url)
        for _ in range(self.cfg.max_redirects + 1):
            self.policy.check(url)
            self.limit.wait(url)
            response = self.session(url).get(url, timeout=self.cfg.timeout, stream=stream, allow_redirects=False)
            if not response.is_redirect:
                return response
            response.close()
            url = resolve(url, response.headers["Location"])
        raise Refused("too_many_redirects", f"more than scrape.max_redirects={self.cfg.max_redirects}, at {url}")


def resolve(base: str, link: str) -> str:
    """`link` against `base`; one that does not parse stays as it is, for the policy to refuse."""
    try:
        return urljoin(base, link)
    except ValueError:
        return link
