"""The token endpoint under attack, measured (issue 9): does guessing slow everyone else down,
and does timing tell which names exist?

Run by hand: `.venv/bin/python -m bench.token_endpoint [--seconds 15] [--guessers 8]`. Starts
Azurite and one Berth with BERTH_AUTH=token on loopback, pushes one image, then measures:
1. manifest GET latency (p50, p99) with a valid token, idle and while `--guessers` threads send
   wrong passwords as fast as they can (first with lockout at its default, then with lockout
   effectively off, so every guess reaches the password check);
2. the token endpoint's answer time for wrong passwords of a name that exists and of one that
   does not (lockout off).
Writes bench/results/<date>-token-endpoint.md and .json.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from registry.azurite import PROJECT_ROOT, Azurite, free_port, stop_process, wait_until_serving

RESULTS = PROJECT_ROOT / "bench" / "results"
ADMIN, PASSWORD = "benchadmin", "bench-admin-password"


def start_berth(azurite: Azurite, log: Path, **extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "BERTH_STORAGE_CONNECTION_STRING": azurite.connection_string, "BERTH_AUTH": "token",
           "BERTH_TOKEN_SIGNING_KEY": base64.b64encode(os.urandom(32)).decode(),
           "BERTH_ADMIN_USER": ADMIN, "BERTH_ADMIN_PASSWORD": PASSWORD, **extra}
    process = subprocess.Popen([sys.executable, "-m", "registry", "serve", "--port", str(port),
                                "--log-level", "warning"], cwd=PROJECT_ROOT, env=env,
                               stdout=log.open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(f"{url}/v2/", process, "berth")
    return process, url


def token(url: str, scope: str) -> str:
    return httpx.get(f"{url}/oauth2/token", params={"scope": scope}, auth=(ADMIN, PASSWORD)).json()["token"]


def push_image(url: str) -> str:
    bearer = {"Authorization": "Bearer " + token(url, "repository:bench/app:pull,push")}
    config = b'{"architecture":"amd64","os":"linux"}'
    import hashlib

    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    httpx.post(f"{url}/v2/bench/app/blobs/uploads/", params={"digest": digest}, content=config, headers=bearer)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest,
                                      "size": len(config)}, "layers": []}).encode()
    response = httpx.put(f"{url}/v2/bench/app/manifests/v1", content=manifest,
                         headers={**bearer, "Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert response.status_code == 201, response.text
    return token(url, "repository:bench/app:pull")


def latencies(url: str, access: str, seconds: float) -> list[float]:
    samples = []
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {access}"}) as client:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            response = client.get("/v2/bench/app/manifests/v1")
            samples.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200, response.text
    return samples


def guess(url: str, name: str, stop: threading.Event, statuses: list[int]) -> None:
    with httpx.Client(base_url=url) as client:
        i = 0
        while not stop.is_set():
            i += 1
            statuses.append(client.get("/oauth2/token", auth=(name, f"wrong-{i}")).status_code)


def under_guessing(url: str, access: str, seconds: float, guessers: int, name: str) -> tuple[list[float], list[int]]:
    stop, statuses = threading.Event(), []
    threads = [threading.Thread(target=guess, args=(url, name, stop, statuses)) for _ in range(guessers)]
    for thread in threads:
        thread.start()
    try:
        return latencies(url, access, seconds), statuses
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def answer_times(url: str, name: str, count: int) -> list[float]:
    times = []
    with httpx.Client(base_url=url) as client:
        for i in range(count):
            start = time.perf_counter()
            client.get("/oauth2/token", auth=(name, f"nope-{i}"))
            times.append((time.perf_counter() - start) * 1000)
    return times


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": statistics.median(ordered), "p99_ms": ordered[int(len(ordered) * 0.99) - 1],
            "n": len(ordered)}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.token_endpoint")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--guessers", type=int, default=8)
    args = parser.parse_args()
    started = datetime.now(UTC)
    work = PROJECT_ROOT / "bench" / "work"
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {}
    with Azurite() as azurite:
        for lockout, extra in (("default", {}), ("off", {"BERTH_AUTH_FAILURE_LIMIT": "10000"})):
            process, url = start_berth(azurite, work / "token-endpoint.log", **extra)
            try:
                access = push_image(url)
                created = subprocess.run(
                    [sys.executable, "-m", "registry", "tokens", "create", f"bench-{lockout}", "--scope",
                     "bench/app=content/read"],
                    cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
                    env={**os.environ, "BERTH_STORAGE_CONNECTION_STRING": azurite.connection_string})
                assert "created" in created.stdout
                idle = latencies(url, access, args.seconds)
                busy, statuses = under_guessing(url, access, args.seconds, args.guessers, f"bench-{lockout}")
                results[f"lockout_{lockout}"] = {
                    "idle": summary(idle), "guessing": summary(busy),
                    "guesses": len(statuses), "guess_statuses": {str(s): statuses.count(s) for s in set(statuses)},
                }
                if lockout == "off":
                    results["answer_ms"] = {"known_name": summary(answer_times(url, f"bench-{lockout}", 200)),
                                            "unknown_name": summary(answer_times(url, "no-such-token", 200))}
            finally:
                stop_process(process)
    stamp = started.strftime("%Y-%m-%d-%H%M")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stamp}-token-endpoint.json").write_text(json.dumps(results, indent=2))
    lines = [f"# Token endpoint under guessing, {started:%Y-%m-%d %H:%M} UTC", "",
             f"Command: `.venv/bin/python -m bench.token_endpoint --seconds {args.seconds:g} "
             f"--guessers {args.guessers}`. Machine: {os.cpu_count()} cores, {platform.machine()}, "
             f"Python {platform.python_version()}; one Berth (uvicorn) on in-memory Azurite.", "",
             "| lockout | manifest GET p50 idle (ms) | p50 while guessing | ratio | p99 idle / guessing | "
             "guesses answered |", "|---|---|---|---|---|---|"]
    for lockout in ("default", "off"):
        r = results[f"lockout_{lockout}"]
        assert isinstance(r, dict)
        idle, busy = r["idle"], r["guessing"]
        lines.append(f"| {lockout} | {idle['p50_ms']:.2f} | {busy['p50_ms']:.2f} | "
                     f"{busy['p50_ms'] / idle['p50_ms']:.2f} | {idle['p99_ms']:.1f} / {busy['p99_ms']:.1f} | "
                     f"{r['guesses']} ({', '.join(f'{k}: {v}' for k, v in sorted(r['guess_statuses'].items()))}) |")
    answers = results["answer_ms"]
    assert isinstance(answers, dict)
    lines += ["", "Wrong-password answer time, lockout off, 200 sequential attempts each (ms):", "",
              "| name | p50 | p99 |", "|---|---|---|",
              f"| exists | {answers['known_name']['p50_ms']:.2f} | {answers['known_name']['p99_ms']:.2f} |",
              f"| does not exist | {answers['unknown_name']['p50_ms']:.2f} | "
              f"{answers['unknown_name']['p99_ms']:.2f} |", ""]
    report = RESULTS / f"{stamp}-token-endpoint.md"
    report.write_text("\n".join(lines))
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
