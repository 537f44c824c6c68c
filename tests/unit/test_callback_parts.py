"""Completion callbacks, the pure parts: the signature receivers verify, the URL policy at submit time, the event
body and the retry schedule."""

from __future__ import annotations

import json
import socket

import pytest

from rerankq.callbacks import CallbackEvent, check_target, check_url, job_data, sign
from rerankq.client import SignatureError, verify_signature
from rerankq.errors import CallbackRefused, InvalidRequest, TransientError
from rerankq.schema import parse_job
from rerankq.settings import CallbackSettings, Settings

SECRET = "whsec_test"
BODY = b'{"id":"evt_1","type":"job.succeeded","created_at":1700000000.5,"data":{"job_id":"j"}}'
NOW = 1_700_000_000


def test_a_signature_verifies_and_names_its_timestamp() -> None:
    header = sign(SECRET, BODY, timestamp=NOW)
    assert header.startswith(f"t={NOW},v1=")
    assert verify_signature(SECRET, header, BODY, tolerance_s=300, now=NOW + 10) == NOW


@pytest.mark.parametrize(("secret", "body", "now", "reason"), [
    (SECRET, BODY.replace(b'"j"', b'"k"'), NOW, "no v1 signature matches"),  # tampered body
    ("another secret", BODY, NOW, "no v1 signature matches"),
    (SECRET, BODY, NOW + 301, "outside the tolerance"),  # stale: a replay
    (SECRET, BODY, NOW - 301, "outside the tolerance"),  # from the future
])
def test_a_tampered_body_a_wrong_secret_or_a_stale_timestamp_fail(secret: str, body: bytes, now: int,
                                                                    reason: str) -> None:
    header = sign(SECRET, BODY, timestamp=NOW)
    with pytest.raises(SignatureError, match=reason):
        verify_signature(secret, header, body, tolerance_s=300, now=now)


@pytest.mark.parametrize("header", [None, "", "v1=abc", "t=abc,v1=abc", f"t={NOW}", f"t={NOW},t={NOW},v1=ab"])
def test_malformed_headers_fail(header: str | None) -> None:
    with pytest.raises(SignatureError):
        verify_signature(SECRET, header, BODY, now=NOW)


def test_any_matching_v1_verifies_so_secrets_can_rotate() -> None:
    old = sign("old secret", BODY, timestamp=NOW).split(",")[1]
    header = f"t={NOW},{old},{sign(SECRET, BODY, timestamp=NOW).split(',')[1]}"
    assert verify_signature(SECRET, header, BODY, now=NOW) == NOW


def test_the_algorithm_is_hmac_sha256_over_timestamp_dot_body() -> None:
    import hashlib
    import hmac

    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, BODY, timestamp=NOW) == f"t={NOW},v1={expected}"


def test_the_documented_test_vector() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "docs" / "USAGE.md").read_text()
    body = (b'{"id":"evt_0123","type":"job.cancelled","created_at":1767225600.5,'
            b'"data":{"job_id":"j1","state":"cancelled"}}')
    header = sign("whsec_example", body, timestamp=1767225601)
    assert body.decode() in readme and header.split(",")[1] in readme


def job(url: str) -> dict[str, object]:
    return {"query": "q", "documents": ["d"], "callback_url": url}


@pytest.mark.parametrize(("url", "reason"), [
    ("http://hooks.example.com/x", "must be an https:// URL; http:// only with callbacks.allow_http"),
    ("ftp://hooks.example.com/x", "must be an https:// URL"),
    ("https://10.1.2.3/x", "private address 10.1.2.3: refused (allowed with callbacks.allow_private, "
                           "RERANKQ_CALLBACKS__ALLOW_PRIVATE)"),
    ("https://127.0.0.1:8443/x", "loopback address 127.0.0.1: refused"),
    ("https://[::1]/x", "loopback address ::1: refused"),
    ("https://[::ffff:169.254.169.254]/x", "cloud metadata address 169.254.169.254"),
    ("https://user:pw@hooks.example.com/x", "credentials in the URL are refused"),
    ("https:///x", "no host"),
    ("https://hooks.example.com:99999/x", "bad port"),
])
def test_a_refused_callback_url_is_an_error_naming_the_field(url: str, reason: str) -> None:
    any_host = Settings(callbacks=CallbackSettings(allowed_hosts=["*"]))  # the address checks still apply
    with pytest.raises(InvalidRequest, match=r"^callback_url: ") as info:
        parse_job(job(url), any_host)
    assert info.value.field == "callback_url"
    assert reason in str(info.value)


def test_callback_urls_that_pass_and_the_settings_that_open_more() -> None:
    with pytest.raises(InvalidRequest, match=r"no callback hosts are allowed: list them in .*ALLOWED_HOSTS"):
        parse_job(job("https://hooks.example.com/rerank"))  # the default: allow-listed hosts only, none listed
    any_host = Settings(callbacks=CallbackSettings(allowed_hosts=["*"]))
    assert parse_job(job("https://hooks.example.com/rerank?x=1"), any_host).callback_url == \
        "https://hooks.example.com/rerank?x=1"
    open_ = Settings(callbacks=CallbackSettings(allow_http=True, allow_private=True, allowed_hosts=["*"]))
    assert parse_job(job("http://127.0.0.1:8080/x"), open_).wire()["callback_url"] == "http://127.0.0.1:8080/x"


def test_the_host_allow_list() -> None:
    listed = Settings(callbacks=CallbackSettings(allowed_hosts=["hooks.example.com", "*.corp.example"]))
    assert parse_job(job("https://hooks.example.com/x"), listed).callback_url
    assert parse_job(job("https://a.b.corp.example/x"), listed).callback_url
    with pytest.raises(InvalidRequest, match=r"'evil\.example' is not on the allow-list .*ALLOWED_HOSTS"):
        parse_job(job("https://evil.example/x"), listed)


def test_every_address_of_the_host_is_checked() -> None:
    dns = {"mixed.example": ["93.184.216.34", "10.0.0.7"], "public.example": ["93.184.216.34"]}

    def resolve(host: str, port: int) -> list[str]:
        if host not in dns:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return dns[host]

    policy = CallbackSettings(allowed_hosts=["*"])
    assert check_target("https://public.example/h", policy, resolve).ip == "93.184.216.34"
    with pytest.raises(CallbackRefused, match=r"'mixed\.example' resolves to a private address 10\.0\.0\.7"):
        check_target("https://mixed.example/h", policy, resolve)
    assert check_target("https://mixed.example/h", CallbackSettings(allow_private=True, allowed_hosts=["*"]),
                        resolve).ip
    with pytest.raises(CallbackRefused, match="does not resolve"):  # at submit: a typo is an error
        check_target("https://nxdomain.example/h", policy, resolve, unresolved_refused=True)
    with pytest.raises(TransientError, match="DNS lookup"):  # at delivery: DNS may come back
        check_target("https://nxdomain.example/h", policy, resolve)


def test_the_static_check_keeps_path_and_query() -> None:
    target = check_url("https://h.example:8443/a/b?c=d", CallbackSettings(allowed_hosts=["h.example"]))
    assert (target.scheme, target.host, target.port, target.path, target.ip) == ("https", "h.example", 8443,
                                                                               "/a/b?c=d", None)


def test_a_job_event_carries_its_status_and_its_result_or_the_pointer() -> None:
    record = {"state": "succeeded", "created_at": "10.5", "started_at": "11", "finished_at": "12.25",
              "pairs_total": "2", "pairs_done": "2", "worker": "w1", "ends": "1",
              "result": json.dumps({"job_id": "j", "scores": [0.5, 0.25]})}
    data = job_data({"key": "pfx:job:j", "job": record}, "pfx:job:")
    assert data == {"job_id": "j", "state": "succeeded", "progress": {"pairs_done": 2, "pairs_total": 2},
                    "created_at": 10.5, "started_at": 11.0, "finished_at": 12.25, "worker": "w1", "error": None,
                    "result": {"job_id": "j", "scores": [0.5, 0.25]}}
    pointer = job_data({"key": "pfx:job:j", "job": {**record, "result": None, "result_uri": "s3://b/j.json"}},
                       "pfx:job:")
    assert pointer["result_uri"] == "s3://b/j.json" and "result" not in pointer


def test_the_body_is_the_same_bytes_on_every_attempt() -> None:
    event = CallbackEvent("evt_1", "https://h/x", "job.failed", 12.5, {"job_id": "j", "error": "é"})
    assert event.body() == CallbackEvent("evt_1", "https://h/x", "job.failed", 12.5, {"job_id": "j", "error": "é"},
                                         attempts=3, last_error="HTTP 500").body()
    assert json.loads(event.body()) == {"id": "evt_1", "type": "job.failed", "created_at": 12.5,
                                        "data": {"job_id": "j", "error": "é"}}


def test_retries_back_off_exponentially_with_a_cap() -> None:
    import redis

    from rerankq.worker.callbacks import Deliverer

    settings = Settings(callbacks=CallbackSettings(backoff_s=1.0, max_backoff_s=30.0))
    deliverer = Deliverer(settings, redis.Redis())  # no command is sent
    delays = [deliverer.backoff(n) for n in range(1, 9)]
    for n, delay in enumerate(delays[:5]):
        assert 2 ** n <= delay <= 2 ** n * 1.25
    assert delays[5:] == [30.0, 30.0, 30.0]
