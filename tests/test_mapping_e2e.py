"""Mapping rules in the real program: names become names and tags on their way to the strict
fake API; SIGHUP reloads the file under traffic (a bad file keeps the rules in use);
``--check-config`` reports every problem with its line."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tests.fakeapi import FakeAppOptics
from tests.proxy import Proxy

TOKEN = "mapping-token"
OLD = (
    '[[rule]]\nmatch = "api.*.requests.*"\nname = "api.requests"\n'
    'tags = { env = "$1", status = "$2" }\n'
)
NEW = OLD.replace('name = "api.requests"', 'name = "http.requests"') + (
    '[[rule]]\nmatch = "debug.**"\naction = "drop"\n'
)
BAD = '[[rule]]\nmatch = "api.*"\nname = "$7"\n'


def lines(n: int, status: str) -> list[bytes]:
    return [f"api.prod.requests.{status}:1|c|#user_id:{i % 3}".encode() for i in range(n)] + [
        b"debug.noise:1|c"
    ]


def test_sighup_reloads_under_traffic_and_a_bad_file_keeps_the_rules(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(OLD)

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            flags = ("--api-url", api.url, "--flush-interval", "86400", "--mapping", str(rules))
            async with Proxy(*flags, "--tag", "host=h", env={"APPOPTICS_TOKEN": TOKEN}) as proxy:
                assert proxy.process is not None
                await proxy.send(lines(300, "200"))
                rules.write_text(NEW)
                proxy.process.send_signal(signal.SIGHUP)
                await proxy.wait_for_log("mapping: 2 rules loaded")
                await proxy.send(lines(200, "500"))
                rules.write_text(BAD)
                proxy.process.send_signal(signal.SIGHUP)
                await proxy.wait_for_log("not reloaded, keeping the 2 rules in use")
                await proxy.send(lines(100, "404"))
                assert await proxy.stop() == 0, proxy.log
            assert "rules.toml:3: rule 1: name '$7'" in proxy.log
            assert not api.rejected
            got: Counter[tuple[str, str | None, str]] = Counter()
            for m in api.accepted:
                if m["name"] == "debug.noise":
                    continue
                got[m["name"], m["tags"].get("env"), m["tags"]["status"]] += int(m["value"])
                assert set(m["tags"]) == {"host", "env", "status", "user_id"}
            assert got == {
                ("api.requests", "prod", "200"): 300,
                ("http.requests", "prod", "500"): 200,
                ("http.requests", "prod", "404"): 100,
            }
            # debug.noise passes under the old rules, is dropped under the new ones
            assert sum(m["value"] for m in api.accepted if m["name"] == "debug.noise") == 1
            assert "rejected" not in proxy.log  # deliberate drops are counted, not warned

    asyncio.run(scenario())


def test_check_config_names_every_problem_in_the_rules_file(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(BAD + '[[rule]]\nregex = "("\n')
    run = subprocess.run(
        [sys.executable, "-m", "statsd_ao", "--check-config", "--mapping", str(rules)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2
    assert "2 problem(s)" in run.stderr
    assert f"{rules}:3: rule 1: name '$7'" in run.stderr
    assert f"{rules}:5: rule 2: bad regex '('" in run.stderr
    rules.write_text(NEW)
    ok = subprocess.run(
        [sys.executable, "-m", "statsd_ao", "--check-config", "--mapping", str(rules)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0 and "mapping OK: 2 rules" in ok.stdout
