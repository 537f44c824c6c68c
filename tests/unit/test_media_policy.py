"""Which references the store refuses, and why, before any byte is sent anywhere.

Names are resolved by an injected resolver (or the system one for ``localhost``); every refusal here happens
before a connection is opened.
"""

from __future__ import annotations

import pytest

from rerankq.errors import MediaError
from rerankq.media.http import HttpFetcher, HttpPolicy, address_refusal
from rerankq.media.store import MediaStore
from rerankq.settings import Settings

REFUSED = {
    "127.0.0.1": "loopback", "127.8.9.10": "loopback", "::1": "loopback", "10.1.2.3": "private",
    "172.16.5.4": "private", "192.168.0.10": "private", "169.254.169.254": "cloud metadata",
    "169.254.1.1": "link-local", "fd00:ec2::254": "cloud metadata", "fe80::1": "link-local",
    "fc00::1": "private", "0.0.0.0": "unspecified", "224.0.0.251": "multicast", "ff02::1": "multicast",
    "240.0.0.1": "reserved", "100.64.0.1": "non-public", "::ffff:127.0.0.1": "loopback",
    "::ffff:169.254.169.254": "cloud metadata", "64:ff9b::a00:1": "private", "2002:a00:1::": "private",
    "100.100.100.200": "cloud metadata",
}


@pytest.mark.parametrize(("ip", "kind"), REFUSED.items())
def test_internal_addresses_are_refused(ip: str, kind: str) -> None:
    assert (address_refusal(ip) or "").startswith(kind)


@pytest.mark.parametrize("ip", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(ip: str) -> None:
    assert address_refusal(ip) is None


def _fetcher(dns: dict[str, list[str]], hosts: tuple[str, ...] = ("media.example.com",)) -> HttpFetcher:
    policy = HttpPolicy(allowed_hosts=frozenset(hosts), resolve=lambda host, port: dns[host])
    return HttpFetcher(policy, max_bytes=1000, timeout_s=1.0)


@pytest.mark.parametrize(("url", "reason"), [
    ("https://other.example.com/a.jpg", "host 'other.example.com' is not on the allow-list"),
    ("https://evil.example.com/a.jpg", "host 'evil.example.com' is not on the allow-list"),
    ("http://media.example.com/a.jpg", "scheme 'http' refused"),
    ("https://user:pw@media.example.com/a.jpg", "credentials in the URL are refused"),
    ("https:///a.jpg", "no host"),
])
def test_hosts_and_urls_outside_the_policy_are_refused(url: str, reason: str) -> None:
    with pytest.raises(MediaError, match=reason) as info:
        _fetcher({"media.example.com": ["93.184.216.34"]}).check(url, url)
    assert info.value.ref == url


@pytest.mark.parametrize(("answers", "reason"), [
    (["10.0.0.7"], "private address 10.0.0.7"),
    (["169.254.169.254"], "cloud metadata address 169.254.169.254"),
    (["93.184.216.34", "127.0.0.1"], "loopback address 127.0.0.1"),  # one internal answer spoils the name
    ([], "does not resolve"),
])
def test_allowed_host_resolving_to_refused_addresses_is_refused(answers: list[str], reason: str) -> None:
    url = "https://media.example.com/a.jpg"
    with pytest.raises(MediaError, match=reason):
        _fetcher({"media.example.com": answers}).check(url, url)


def test_checked_address_is_the_one_connected_to() -> None:
    url = "https://media.example.com:8443/a.jpg?v=2"
    target = _fetcher({"media.example.com": ["93.184.216.34"]}).check(url, url)
    assert (target.ip, target.port, target.host, target.path) == ("93.184.216.34", 8443, "media.example.com",
                                                                    "/a.jpg?v=2")


def test_wildcard_entries_allow_subdomains_only() -> None:
    policy = HttpPolicy(allowed_hosts=frozenset({"*.cdn.example.com"}))
    assert policy.host_allowed("img.cdn.example.com")
    assert policy.host_allowed("IMG.cdn.example.com.")
    assert not policy.host_allowed("cdn.example.com")
    assert not policy.host_allowed("evilcdn.example.com")


@pytest.mark.parametrize(("ref", "reason"), [
    ("ftp://host/a.jpg", "unsupported reference scheme 'ftp'"),
    ("gs://bucket/a.jpg", "unsupported reference scheme 'gs'"),
    ("http://host/a.jpg", "plain http:// is refused"),
    ("s3://bucket-only", "needs a bucket and a key"),
    ("s3:///key", "needs a bucket and a key"),
    ("s3:/bucket/key", "malformed reference"),
    ("", "empty"),
    ("file:///etc/hostname", "local files are disabled"),
    ("/etc/hostname", "local files are disabled"),
    ("https://localhost/a.jpg", "resolves to a refused loopback address"),
    ("https://127.0.0.1/a.jpg", "resolves to a refused loopback address"),
    ("https://10.0.0.1/a.jpg", "resolves to a refused private address"),
    ("https://169.254.169.254/latest/meta-data/", "resolves to a refused cloud metadata address"),
    ("https://[fd00:ec2::254]/latest/", "resolves to a refused cloud metadata address"),
    ("https://not-allowed.example/a.jpg", "not on the allow-list"),
])
def test_store_refuses_with_a_reason(ref: str, reason: str) -> None:
    settings = Settings(http_allowed_hosts="localhost,127.0.0.1,10.0.0.1,169.254.169.254,fd00:ec2::254")
    with pytest.raises(MediaError, match=reason) as info:
        MediaStore(settings).fetch(ref)
    assert str(info.value).startswith(f"{ref}: ")


def test_file_references_are_read_when_enabled(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "a b.bin"
    path.write_bytes(b"hello")
    store = MediaStore(Settings(allow_file_urls=True))
    assert store.fetch(f"file://{str(path).replace(' ', '%20')}") == b"hello"
    assert store.fetch(str(path)) == b"hello"
    with pytest.raises(MediaError, match="no such file"):
        store.fetch(f"file://{tmp_path}/missing.jpg")
    with pytest.raises(MediaError, match="remote host 'server'"):
        store.fetch("file://server/share/a.jpg")


def test_file_over_the_byte_limit_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "big.bin").write_bytes(b"x" * 2000)
    settings = Settings(allow_file_urls=True, limits={"max_media_bytes": 1000})
    with pytest.raises(MediaError,
                       match=r"2000 bytes, over the limit 1000 \(limits.max_media_bytes, "
                             r"RERANKQ_LIMITS__MAX_MEDIA_BYTES\)"):
        MediaStore(settings).fetch(str(tmp_path / "big.bin"))
