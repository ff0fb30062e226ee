"""Does recording events slow pushes? Small pushes with two webhooks configured against none.

Two Berth instances on one Azurite, each with its own tables: `none` has no webhook, `hooks`
has two (every push and delete, a receiver on loopback answering 200). Rounds alternate; each
pushes `--images` small images over plain HTTP (see bench/push_ab.py) and measures the round
and the manifest PUTs. Target (issue #13): push time ratio hooks/none <= 1.05, events recorded,
not delivered, on the push path: by default the instances deliver nothing while they are
measured, and a third instance delivers everything afterwards (counted). `--deliver-during`:
the instances' own workers deliver meanwhile, on the same two cores and the same Azurite.

    .venv/bin/python -m bench.events [--images 50] [--rounds 6] [--deliver-during]

Writes bench/results/<date>-events.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.push_ab import RESULTS, git, one_round
from bench.targets import start_berth
from registry.azurite import PROJECT_ROOT, Azurite


def receiver() -> tuple[ThreadingHTTPServer, list[int]]:
    count = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("content-length", "0")))
            count[0] += 1
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, count


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.events", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--deliver-during", action="store_true", help="deliver while pushes are measured")
    args = parser.parse_args()
    worker = {"BERTH_EVENTS_WORKER": "true" if args.deliver_during else "false"}
    work = Path(tempfile.mkdtemp(prefix="berth-events-"))
    sink, delivered = receiver()
    results: dict[str, dict[str, list[float]]] = {side: {"round": [], "put": []} for side in ("none", "hooks")}
    with Azurite() as azurite:
        common = {"BERTH_WEBHOOK_PRIVATE_HOSTS": "127.0.0.1", **worker}
        none = start_berth(azurite, "redirect", work / "none.log", BERTH_TABLE_PREFIX="benchnone", **common)
        hooks = start_berth(azurite, "redirect", work / "hooks.log", BERTH_TABLE_PREFIX="benchhooks", **common)
        try:
            for name in ("first", "second"):
                subprocess.run([sys.executable, "-m", "registry", "webhook", "create", f"bench{name}", "--uri",
                                f"http://127.0.0.1:{sink.server_port}/{name}"], cwd=PROJECT_ROOT, check=True,
                               capture_output=True, env={**_env(azurite), "BERTH_TABLE_PREFIX": "benchhooks"})
            time.sleep(11)  # the instances see the webhooks (BERTH_WEBHOOKS_TTL_SECONDS)
            for side, target in (("none", none), ("hooks", hooks)):
                one_round(target.url, 5, f"warm-{side}")
            for number in range(args.rounds):
                order = (("none", none), ("hooks", hooks)) if number % 2 == 0 else (("hooks", hooks), ("none", none))
                for side, target in order:
                    total, puts = one_round(target.url, args.images, f"{side}{number}")
                    results[side]["round"].append(total)
                    results[side]["put"].append(statistics.median(puts) * 1000)
                    print(f"round {number} {side}: {total:.2f} s, manifest PUT median "
                          f"{results[side]['put'][-1]:.1f} ms (delivered so far: {delivered[0]})", flush=True)
            expected = 2 * (5 + args.images * args.rounds)
            delivering = None if args.deliver_during else start_berth(
                azurite, "redirect", work / "worker.log", BERTH_TABLE_PREFIX="benchhooks",
                BERTH_WEBHOOK_PRIVATE_HOSTS="127.0.0.1", BERTH_EVENT_SWEEP_SECONDS="5",
                BERTH_EVENT_SWEEP_AGE_SECONDS="5")
            deadline = time.monotonic() + 180
            while delivered[0] < expected and time.monotonic() < deadline:
                time.sleep(0.5)
            if delivering is not None:
                delivering.stop()
        finally:
            none.stop()
            hooks.stop()
            sink.shutdown()
    median = {side: {k: statistics.median(v) for k, v in values.items()} for side, values in results.items()}
    stamp = datetime.now(UTC)
    ratio = median["hooks"]["round"] / median["none"]["round"]
    mode = ("both instances' workers deliver meanwhile" if args.deliver_during else
            "nothing is delivered while pushes are measured; a third instance delivers afterwards")
    flag = " --deliver-during" if args.deliver_during else ""
    lines = [f"# Events on the push path ({git('rev-parse', '--short', 'HEAD')}, {stamp:%Y-%m-%d %H:%M} UTC)", "",
             f"`python -m bench.events --images {args.images} --rounds {args.rounds}{flag}`: two Berth instances on "
             "one in-memory Azurite, own tables each; `hooks` has two webhooks (every event), `none` has none. "
             f"Alternating rounds; plain HTTP, monolithic blob POSTs; {mode}.", "",
             "| | none | two webhooks | ratio (median) |", "|---|---|---|---|"]
    for key, label in (("round", f"{args.images} pushes (s)"), ("put", "manifest PUT, median per round (ms)")):
        lines.append(f"| {label} | {', '.join(f'{v:.2f}' for v in results['none'][key])} | "
                     f"{', '.join(f'{v:.2f}' for v in results['hooks'][key])} | "
                     f"{median['hooks'][key] / median['none'][key]:.3f} |")
    lines += ["", f"Events delivered: {delivered[0]} of {expected} expected (2 webhooks x every push).",
              f"Target: push time ratio <= 1.05; measured {ratio:.3f}."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = RESULTS / f"{stamp:%Y-%m-%d-%H%M}-events{'-delivering' if args.deliver_during else ''}.md"
    report.write_text("\n".join(lines) + "\n")
    print(json.dumps({"ratio": ratio, "delivered": delivered[0], "expected": expected}))
    print(f"bench: wrote {report}")
    return 0


def _env(azurite: Azurite) -> dict[str, str]:
    import os

    return {**os.environ, "BERTH_STORAGE_CONNECTION_STRING": azurite.connection_string}


if __name__ == "__main__":
    raise SystemExit(main())
