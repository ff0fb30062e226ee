"""What a month of Berth costs on Azure, from measured storage transactions and list prices.

The transactions per registry operation come from `python -m bench.transactions` (its newest
.json in bench/results/, or --transactions FILE). Prices are inputs: the defaults below are
pay-as-you-go list prices in USD as we read them on the Azure pricing pages in November 2026
(East US); they change, so pass current ones (--price NAME=VALUE) and recompute. Fixed costs of a
deployment (private endpoints, NAT gateway, Log Analytics) are listed apart: they do not grow
with use, and ACR Premium, the ACR tier with private endpoints, charges them on top too.

    .venv/bin/python -m bench.cost_model [--pulls-per-day 10000] [--pushes-per-day 200] \
        [--layers 5] [--stored-gb 50] [--price table_per_10k=0.00036 ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.push_ab import RESULTS

PRICES = {
    # Azure Functions Flex Consumption, on demand
    "execution_per_million": 0.40,
    "gb_second": 0.000026,
    "free_executions": 250_000,  # per subscription and month
    "free_gb_seconds": 100_000,
    # Blob Storage, Hot, LRS (ZRS costs about a quarter more)
    "blob_write_per_10k": 0.055,  # Put Block, Put Block List, Put Blob, Set Metadata
    "blob_read_per_10k": 0.0044,  # Get Blob; Get Blob Properties is an "other" operation at the same price
    "blob_gb_month": 0.018,
    # Table Storage: every transaction, an entity group transaction included, at one price
    "table_per_10k": 0.00036,
    # ACR per registry and day, for comparison
    "acr_basic_day": 0.167,
    "acr_standard_day": 0.667,
    "acr_premium_day": 1.667,
    # fixed costs of the deployment (per hour)
    "private_endpoint_hour": 0.01,
    "nat_gateway_hour": 0.045,
}
# Server time one request keeps an instance busy (measured on this machine's Azurite; storage on
# Azure answers in a few milliseconds too), and the instance memory billed while it does.
SECONDS_PER_REQUEST = {"pull": 0.006, "push": 0.02}
INSTANCE_GB = 2.0


def _latest_transactions() -> Path:
    found = sorted(RESULTS.glob("*-transactions.json"))
    if not found:
        raise SystemExit("no bench/results/*-transactions.json: run python -m bench.transactions first")
    return found[-1]


def _price_of(counts: dict[str, float], prices: dict[str, float]) -> float:
    """The storage price of one operation's transactions."""
    total = 0.0
    for kind, count in counts.items():
        if kind == "(all)":
            continue
        if kind.startswith("table:"):
            total += count * prices["table_per_10k"] / 10_000
        elif any(word in kind for word in ("Put", "PUT", "Set")):
            total += count * prices["blob_write_per_10k"] / 10_000
        else:
            total += count * prices["blob_read_per_10k"] / 10_000
    return total


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cost_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pulls-per-day", type=int, default=10_000, help="image pulls by tag")
    parser.add_argument("--pushes-per-day", type=int, default=200, help="pushes of an image with one new small layer")
    parser.add_argument("--layers", type=int, default=5, help="layers per image (a pull GETs each, plus the config)")
    parser.add_argument("--stored-gb", type=float, default=50.0)
    parser.add_argument("--transactions", type=Path, default=None)
    parser.add_argument("--price", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    prices = dict(PRICES)
    for item in args.price:
        name, _, value = item.partition("=")
        if name not in prices:
            raise SystemExit(f"unknown price {name!r}; known: {', '.join(prices)}")
        prices[name] = float(value)
    source = args.transactions or _latest_transactions()
    measured = json.loads(source.read_text())
    manifest = measured["manifest GET by tag"]
    blob_get = measured["blob GET (307 to storage)"]
    push = measured["push small image (base layer present)"]
    # A pull: the manifest by tag, then the config and each layer (a 307, then storage's Get Blob).
    blobs = args.layers + 1
    pull_storage = _price_of(manifest, prices) + blobs * (_price_of(blob_get, prices)
                                                         + prices["blob_read_per_10k"] / 10_000)
    pull_requests = 1 + blobs
    push_requests = 1 + 3 * 4  # three blobs (HEAD, POST, PATCH, PUT; one of them only its HEAD) and the manifest
    days = 30
    requests = days * (args.pulls_per_day * pull_requests + args.pushes_per_day * push_requests)
    gb_seconds = days * INSTANCE_GB * (args.pulls_per_day * pull_requests * SECONDS_PER_REQUEST["pull"]
                                       + args.pushes_per_day * push_requests * SECONDS_PER_REQUEST["push"])
    executions = max(0, requests - prices["free_executions"]) * prices["execution_per_million"] / 1e6
    compute = max(0.0, gb_seconds - prices["free_gb_seconds"]) * prices["gb_second"]
    storage_ops = days * (args.pulls_per_day * pull_storage + args.pushes_per_day * _price_of(push, prices))
    stored = args.stored_gb * prices["blob_gb_month"]
    fixed = 730 * (4 * prices["private_endpoint_hour"] + prices["nat_gateway_hour"])
    rows = [
        ("executions", f"{requests:,} requests", executions),
        ("execution time", f"{gb_seconds:,.0f} GB-s", compute),
        ("storage transactions", f"{measured['manifest GET by tag']['(all)']:g} per manifest GET, "
                                 f"{push['(all)']:g} per small push", storage_ops),
        ("stored bytes", f"{args.stored_gb:g} GB", stored),
    ]
    usage = sum(cost for *_, cost in rows)
    print(f"# A month of Berth: {args.pulls_per_day:,} pulls and {args.pushes_per_day:,} pushes a day, "
          f"{args.layers} layers per image (transactions from {source.name})\n")
    print("| item | quantity | USD / month |\n|---|---|---|")
    for name, quantity, cost in rows:
        print(f"| {name} | {quantity} | {cost:.2f} |")
    print(f"| **usage** | | **{usage:.2f}** |")
    print(f"| fixed: 4 private endpoints + NAT gateway | 730 h | {fixed:.2f} |")
    print(f"| **Berth total** | | **{usage + fixed:.2f}** |")
    for tier in ("basic", "standard", "premium"):
        fee = days * prices[f"acr_{tier}_day"]
        print(f"| ACR {tier.capitalize()} (registry fee alone) | {days} days | {fee:.2f} |")
    print("\nPer 1,000 operations: pull "
          f"{1000 * pull_storage:.4f} USD of storage transactions ({pull_requests} requests); small push "
          f"{1000 * _price_of(push, prices):.4f} USD ({push_requests} requests).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
