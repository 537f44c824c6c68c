"""JSONL batches with real processes: a private ``redis-server``, moto's S3 server, ``rerankq worker`` processes
(the fake scorer: its scores are a hash of the content, so every line's scores can be checked), a 3 s lease.

Every test reads the output back from S3 and checks the contract: every input line appears in exactly one
part line (``results/`` or ``errors/``), keyed by ``custom_id`` and line number.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rerankq.batches import BatchState
from rerankq.cli.cluster import S3Server
from tests.chaos_kit import SLOW, Cluster, Redis, Reference, wait_until

pytestmark = pytest.mark.slow
BUCKET = "batches"


@pytest.fixture()
def cluster(private_redis: Redis, s3_server: S3Server, s3: Any, tmp_path: Path) -> Iterator[Cluster]:
    s3.create_bucket(Bucket=BUCKET)
    c = Cluster(private_redis.url, s3_server.url, tmp_path, RERANKQ_BATCHES__PART_INTERVAL_S="0.5",
                RERANKQ_BATCHES__CHUNK="100")
    yield c
    c.close()


def job_line(i: int, docs: int = 2, **extra: Any) -> dict[str, Any]:
    return {"custom_id": f"c{i}", "query": {"text": f"query {i}"},
            "documents": [{"text": f"doc {i}.{d}"} for d in range(docs)], **extra}


def put_lines(s3: Any, key: str, lines: list[str]) -> str:
    s3.put_object(Bucket=BUCKET, Key=key, Body=("\n".join(lines) + "\n").encode())
    return f"s3://{BUCKET}/{key}"


def output(s3: Any, prefix: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every results line and every errors line under ``prefix``."""
    found: dict[str, list[dict[str, Any]]] = {"results": [], "errors": []}
    for kind in found:
        listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}{kind}/").get("Contents", [])
        for obj in sorted(listing, key=lambda o: o["Key"]):
            body = s3.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read().decode()
            found[kind] += [json.loads(line) for line in body.splitlines() if line]
    return found["results"], found["errors"]


def running_batch(cluster: Cluster, s3: Any, name: str, n: int, done: int) -> tuple[Any, str, Any, Any]:
    """Two slow workers, a batch of ``n`` lines named ``name`` with ``done`` of them ended: (client, input URI,
    the worker running the batch, the other one)."""
    a, b = cluster.start(2, SLOW)
    uri = put_lines(s3, f"in/{name}.jsonl", [json.dumps(job_line(i, 3)) for i in range(1, n + 1)])
    client = cluster.client()
    client.submit_batch(uri, f"s3://{BUCKET}/out/{name}/", batch_id=name)
    wait_until(lambda: client.batch(name).done >= done, 60, f"{done} lines done")
    runner, other = (a, b) if f"batch {name}: running" in a.log.read_text() else (b, a)
    return client, uri, runner, other


def check_every_line_once(results: list[dict[str, Any]], errors: list[dict[str, Any]], n: int) -> None:
    numbers = sorted(line["line"] for line in results + errors)
    assert numbers == list(range(1, n + 1)), (
        f"{len(numbers)} output lines for {n} input lines; duplicated: "
        f"{sorted({x for x in numbers if numbers.count(x) > 1})[:10]}; missing: "
        f"{sorted(set(range(1, n + 1)) - set(numbers))[:10]}")


def test_a_batch_of_thousands_of_lines_ends_with_one_line_per_input_line(cluster: Cluster, s3: Any) -> None:
    cluster.start(1)
    n = 2000
    lines = [json.dumps(job_line(i)) for i in range(1, n + 1)]
    lines[9] = "{not json"  # line 10
    lines[19] = json.dumps({"custom_id": "c20", "query": {"text": "q"}})  # line 20: no documents
    lines[29] = json.dumps(job_line(7))  # line 30: custom_id c7 again
    lines[39] = json.dumps({**job_line(40, 1), "documents": [{"image": f"s3://{BUCKET}/missing.png"}]})
    lines[49] = json.dumps({"custom_id": "c50", "method": "POST", "url": "/v1/rerank",
                            "body": {"query": "openai line", "documents": ["a", "b", "c"], "top_n": 2}})
    uri = put_lines(s3, "in/big.jsonl", lines)
    client = cluster.client()
    record = client.submit_batch(uri, f"s3://{BUCKET}/out/big/", batch_id="big")
    assert record.state == BatchState.VALIDATING

    def partial() -> Any:
        rec = client.batch("big")
        return rec.state == BatchState.IN_PROGRESS and rec.parts["results"] > 0 and rec.done < n

    wait_until(partial, 60, "a part written while the batch runs")
    readable, _ = output(s3, "out/big/")
    assert readable and all("results" in line for line in readable)

    final = client.wait_batch("big", timeout=180)
    assert final.state == BatchState.COMPLETED, final
    results, errors = output(s3, "out/big/")
    check_every_line_once(results, errors, n)
    by_line = {line["line"]: line for line in errors}
    assert set(by_line) == {10, 20, 30, 40}
    assert by_line[10]["error"]["code"] == "invalid_request" and "not JSON" in by_line[10]["error"]["message"]
    assert "documents" in by_line[20]["error"]["message"]
    assert by_line[30]["error"]["code"] == "duplicate_custom_id" and by_line[30]["custom_id"] == "c7"
    assert by_line[40]["state"] == "failed" and "missing.png" in by_line[40]["error"]["message"]
    ref = Reference(cluster.s3_url)
    for line in results[:50] + [r for r in results if r["line"] == 50]:
        i = line["line"]
        job = json.loads(lines[i - 1])
        job.pop("custom_id")
        if "body" in job:
            job = {"query": {"text": "openai line"}, "documents": [{"text": t} for t in "abc"]}
        assert line["custom_id"] == (f"c{i}" if i != 50 else "c50")
        assert line["scores"] == ref.scores(job)
    assert len(next(r for r in results if r["line"] == 50)["results"]) == 2  # the body's top_n
    assert final.counts == {"total": n, "queued": 0, "running": 0, "succeeded": n - 4, "failed": 4,
                            "cancelled": 0, "expired": 0}
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key="out/big/manifest.json")["Body"].read())
    assert manifest["state"] == "completed" and manifest["counts"]["succeeded"] == n - 4
    assert sum(p["lines"] for p in manifest["parts"]["results"]) == n - 4
    again = client.submit_batch(uri, f"s3://{BUCKET}/out/big/", batch_id="big")  # adds nothing
    assert again.state == BatchState.COMPLETED and again.counts == final.counts


def test_the_runner_killed_mid_batch_and_the_batch_resubmitted_still_gives_n_lines(cluster: Cluster,
                                                                                 s3: Any) -> None:
    n = 600
    client, uri, runner, _ = running_batch(cluster, s3, "kill", n, 50)
    runner.proc.send_signal(signal.SIGKILL)
    runner.proc.wait()
    done_at_kill = client.batch("kill").done
    client.submit_batch(uri, f"s3://{BUCKET}/out/kill/", batch_id="kill")  # a submitter that retried
    final = client.wait_batch("kill", timeout=240)
    assert final.state == BatchState.COMPLETED
    results, errors = output(s3, "out/kill/")
    check_every_line_once(results, errors, n)
    assert not errors and final.counts["succeeded"] == n
    print(f"[batch] runner SIGKILLed after {done_at_kill} of {n} lines: {len(results)} result lines, 0 duplicated")


def test_cancel_keeps_finished_results_and_accounts_for_every_line(cluster: Cluster, s3: Any) -> None:
    cluster.start(1, SLOW)
    n = 1500
    uri = put_lines(s3, "in/cancel.jsonl", [json.dumps(job_line(i, 4)) for i in range(1, n + 1)])
    client = cluster.client()
    client.submit_batch(uri, f"s3://{BUCKET}/out/cancel/", batch_id="cancel")
    wait_until(lambda: client.batch("cancel").done >= 30, 60, "30 lines done")
    assert client.cancel_batch("cancel") == "in_progress"
    final = client.wait_batch("cancel", timeout=120)
    assert final.state == BatchState.CANCELLED
    results, errors = output(s3, "out/cancel/")
    check_every_line_once(results, errors, n)
    assert len(results) >= 30 and final.counts["succeeded"] == len(results)
    assert {e["error"]["code"] for e in errors} <= {"cancelled"}
    assert final.counts["cancelled"] == len(errors) > 0


def test_a_completion_window_expires_what_did_not_run(cluster: Cluster, s3: Any, tmp_path: Path) -> None:
    cluster.start(1, SLOW)
    n = 3000
    local = tmp_path / "window.jsonl"
    local.write_text("".join(json.dumps(job_line(i, 4)) + "\n" for i in range(1, n + 1)))
    client = cluster.client()
    record = client.submit_batch(str(local), f"s3://{BUCKET}/out/window/", completion_window_s=4)
    assert record.input_uri == f"s3://{BUCKET}/out/window/input/window.jsonl"  # a local input is uploaded
    final = client.wait_batch(record.batch_id, timeout=120)
    assert final.state == BatchState.EXPIRED
    results, errors = output(s3, "out/window/")
    check_every_line_once(results, errors, n)
    assert results and final.counts["expired"] == len(errors) and final.counts["succeeded"] == len(results)
    assert {e["error"]["code"] for e in errors} == {"expired"}
    again = client.submit_batch(str(local), f"s3://{BUCKET}/out/window/")  # same file: same id, nothing added
    assert again.batch_id == record.batch_id and again.state == BatchState.EXPIRED
    assert time.time() - final.finished_at < 120  # type: ignore[operator]


def test_a_worker_stopped_with_sigterm_hands_its_batch_on(cluster: Cluster, s3: Any) -> None:
    n = 500
    client, _, runner, other = running_batch(cluster, s3, "term", n, 30)
    t0 = time.monotonic()
    runner.proc.send_signal(signal.SIGTERM)
    assert runner.proc.wait(timeout=60) == 0
    stopped = time.monotonic() - t0
    final = client.wait_batch("term", timeout=240)
    assert final.state == BatchState.COMPLETED
    results, errors = output(s3, "out/term/")
    check_every_line_once(results, errors, n)
    assert not errors and "batch term: running" in other.log.read_text()
    print(f"[batch] SIGTERM: the runner's worker exited in {stopped:.1f} s; the other worker finished the batch")
