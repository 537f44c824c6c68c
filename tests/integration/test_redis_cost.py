"""The Redis cost bench (``rerankq bench --redis-cost``, bench/redis_cost.py) on its own private cluster: every
command Redis executed in a run lands in one phase, and each job's life shows in the phases it must pass."""

from __future__ import annotations

import json
import subprocess
import sys


def test_every_command_of_a_run_lands_in_a_phase() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rerankq.cli", "bench", "--redis-cost", "--run", "many:20x8:text", "--idle", "1",
         "--warmup", "2", "--json"], capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = json.loads(done.stdout.strip().splitlines()[-1])["runs"]
    assert run["jobs"] == 20
    assert run["traced"]["succeeded"] == run["untraced"]["succeeded"] == 20

    # Sent commands come from the slowlog, executed ones from commandstats: the phases account for all of them.
    counts = run["traced"]["counts"]
    phases = {name: p["counts"] for name, p in run["phases"].items()}
    assert sum(p["sent"] for p in phases.values()) == counts["sent"] == counts["executed"] - counts["lua_inner"]
    assert sum(p["executed"] for p in phases.values()) == counts["executed"] > counts["sent"] > 0
    assert run["checks"] == {"unexplained": {}, "mismatch": {}, "lua_orphans": 0, "unknown_process_commands": 0,
                             "slowlog_full": False}
    assert run["untraced"]["executed_per_job"] > 0 and run["untraced"]["cpu_us_per_job"] > 0

    assert phases.get("result backend", {}).get("sent", 0) == 0  # the SDK's messages leave no Celery result
    for name in ("submit", "take", "start", "finish", "ack"):
        assert phases[name]["sent"] > 0, name
    # Each job: one record created, one message fetched and acknowledged, one start, one finish; no result read.
    items = {name: p["items"] for name, p in run["phases"].items()}
    assert items["submit"]["EVALSHA create sent"] == 1  # the record and its pending entry, in one script
    # a BRPOP wakes the worker; one RPOP takes the rest of the round with it: at most one fetch command per job
    assert 0 < items["take"]["BRPOP queue"] + items["take"].get("RPOP queue", 0) <= 1
    assert phases.get("accept", {}).get("sent", 0) == 0  # the SDK made each record: the worker does not look again
    assert phases["events"]["sent"] / 20 < 0.5  # nothing subscribed to task events: a message per call or second
    assert phases.get("cancel check", {}).get("executed", 0) / 20 <= 1  # a counter per pass, not a state per job
    assert 0 < items["ack"]["ZREM unacked_index"] <= 1  # the acks of one event-loop pass go out together
    assert 0 < items["start"]["EVALSHA start"] <= 1  # one call per round, for all the jobs it takes
    assert items["start"]["HMGET job (Lua)"] == 1  # ... which reads each job's record once
    assert 0 < items["finish"]["EVALSHA finish"] <= 1  # one call per pass, for all the jobs it ends
    assert phases.get("client read", {}).get("sent", 0) == 0  # each result came with its end, on the notify list
    assert phases["finish"]["lua_inner"] > phases["finish"]["sent"]  # the FINISH script's writes run inside it
    assert items["finish"]["RPUSH notify (Lua)"] < 1  # ... which pushes the ends of a call in one go
