"""Berth's settings: one frozen object, built from BERTH_* environment variables here only."""

from __future__ import annotations

import base64
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

from registry.oci.errors import RegistryError
from registry.oci.names import validate_name

MiB = 1024 * 1024
REQUEST_LOG_LEVELS = ("off", "errors", "changes", "all")


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class Settings:
    # Storage: a connection string (Azurite, or an account key) or account endpoints + Entra ID.
    storage_connection_string: str | None = None
    blob_endpoint: str | None = None
    table_endpoint: str | None = None
    queue_endpoint: str | None = None
    managed_identity_client_id: str | None = None
    blob_container: str = "berth"
    table_prefix: str = "berth"
    # Delivery of blob bytes: "redirect" (307 to a read-only SAS URL) or "proxy".
    blob_delivery: str = "redirect"
    sas_ttl_seconds: int = 600
    upload_ttl_seconds: int = 24 * 3600
    # Azure gives a block blob its high-throughput path only for blocks of more than 4 MiB
    # (standard accounts); two 8 MiB blocks in flight are as many bytes as four of 4 MiB were.
    block_size: int = 8 * MiB
    blocks_in_flight: int = 2
    max_manifest_bytes: int = 4 * MiB
    max_page_size: int = 1000
    # Referrers per page when the client gives no smaller `n` (pages are also capped at 1 MiB).
    referrers_page_size: int = 100
    # Garbage collection (README, "Garbage collection"): unreferenced bytes older than the grace
    # period are condemned, and deleted after the settle time if still unreferenced.
    # Tests only (BERTH_REPOSITORY_DELETE_SETTLE_SECONDS): see repository_delete_settle_seconds.
    repository_delete_settle_override: float | None = None
    gc_grace_seconds: int = 24 * 3600
    gc_settle_seconds: int = 60
    # Retention of untagged manifests (retention.py): the registry's policy until `retention set`
    # stores one; None = disabled (ACR's default). Tests shorten the margin (see retention_margin).
    retention_days: int | None = None
    retention_margin_override: int | None = None
    # Hosts (`host` or `host:port`) the HTTP import endpoint may reach on private addresses.
    upstream_private_hosts: tuple[str, ...] = ()
    # Pull-through cache (pullthrough.py): how long a cached tag is served before upstream is asked again.
    cache_tag_ttl_seconds: int = 3600
    # Events (README, "Events and webhooks"). The push path keeps the webhook definitions this long.
    webhooks_ttl_seconds: int = 10
    # A write's event is looked for this long after it was announced (most writes take less).
    event_look_after_seconds: int = 2
    # Announced events not handed on after this long are taken by the sweep, which `serve` runs
    # this often (the Functions host: every minute, on a timer).
    event_sweep_age_seconds: int = 60
    event_sweep_seconds: int = 60
    events_worker: bool = True  # `serve` delivers events itself (the Functions host: a queue trigger)
    # Create the container, tables and queue on an instance's first request. Off where the
    # deployment made them (infra/): saves six storage calls per cold start, and the identity
    # needs no right to create anything on the account.
    create_storage: bool = True
    # One JSON line per request on the logger `berth.request`: off, errors (4xx but the bare
    # challenge, 5xx), changes (errors and every write), all.
    request_log: str = "changes"
    webhook_timeout_seconds: int = 10
    webhook_attempts: int = 8  # then the event is dead-lettered (in `webhook events`)
    webhook_backoff_seconds: int = 10  # after the first failure; doubles each time, capped at an hour
    webhook_allowed_hosts: tuple[str, ...] = ()  # empty: any host; `*.example.com` for subdomains
    webhook_private_hosts: tuple[str, ...] = ()  # hosts or CIDR ranges on private addresses one may call
    event_log_days: int = 7
    eventgrid_topic_endpoint: str | None = None  # publish every event to this Event Grid topic too
    eventgrid_key: str | None = None  # a reference to its access key; unset: the managed identity
    test_event_fault: str = ""  # tests only: "no-message" or "crash" (storage/events.py)
    # Each storage call gives up after this long per attempt (with one quick retry), so a
    # request with storage down answers 503 well inside the platform's 230 s.
    storage_timeout_seconds: int = 10

    @property
    def request_budget_seconds(self) -> int:
        """The most a request may take that does not wait on a client's upload (then 503)."""
        return 6 * self.storage_timeout_seconds

    @property
    def repository_delete_settle_seconds(self) -> float:
        """How long a repository delete waits, after unlinking the blobs, for pushes that checked
        their blobs before: longer than any acknowledged push takes (tests shorten it)."""
        if self.repository_delete_settle_override is not None:
            return self.repository_delete_settle_override
        return self.request_budget_seconds + 5

    @property
    def retention_margin_seconds(self) -> int:
        """Retention deletes no row written more recently than this: longer than any request
        takes, plus clock skew (tests shorten it)."""
        if self.retention_margin_override is not None:
            return self.retention_margin_override
        return self.request_budget_seconds + 300
    # Authentication (BERTH_AUTH=token): see README, "Authentication".
    auth: str = "none"
    local_data_dir: str = ".berth-data"  # local runs only: Azurite's data, the generated token key
    public_url: str | None = None
    service: str | None = None
    # The first key signs; all of them verify (a rotation adds the new key, then retires the old).
    token_signing_keys: tuple[bytes, ...] = ()
    access_token_ttl_seconds: int = 1200
    refresh_token_ttl_seconds: int = 3 * 3600
    # Entra app roles are frozen into a refresh token: it lives no longer than this.
    entra_refresh_token_ttl_seconds: int = 3 * 3600
    # Failed password attempts per principal (all instances) and per client address (per
    # instance) within the window, before the token endpoint answers 429 until it passes.
    auth_failure_limit: int = 10
    auth_failure_window_seconds: int = 300
    # Proxies in front of Berth that append the caller's address to X-Forwarded-For (Azure's
    # front end: 1). 0: the TCP peer is the caller (`serve` with nothing in front).
    trusted_proxy_hops: int = 0
    admin_user: str | None = None
    admin_password: str | None = None
    anonymous_pull: bool = False
    # Repositories whose OCI images are also served as Docker schema 2 to clients that accept
    # only Docker types (`*`, `name`, `team/*`); empty: none. See README, "Docker renditions".
    docker_renditions: tuple[str, ...] = ()
    entra_tenant_id: str | None = None
    entra_audiences: tuple[str, ...] = ()
    entra_jwks_url: str | None = None
    entra_authority_host: str = "login.microsoftonline.com"
    entra_jwks_cooldown_seconds: int = 30

    @property
    def storage_configured(self) -> bool:
        return bool(self.storage_connection_string or (self.blob_endpoint and self.table_endpoint))

    def with_storage(self, connection_string: str) -> Settings:
        return replace(self, storage_connection_string=connection_string)


def _int(env: Mapping[str, str], key: str, default: int, minimum: int, maximum: int) -> int:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{key} must be an integer, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise SettingsError(f"{key} must be between {minimum} and {maximum}, got {value}")
    return value


def _optional_int(env: Mapping[str, str], key: str, minimum: int, maximum: int) -> int | None:
    return None if not env.get(key) else _int(env, key, 0, minimum, maximum)


def _choice(env: Mapping[str, str], key: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(key) or default
    if value not in choices:
        raise SettingsError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _bool(env: Mapping[str, str], key: str) -> bool:
    raw = (env.get(key) or "false").strip().lower()
    if raw not in ("true", "false", "1", "0", "yes", "no"):
        raise SettingsError(f"{key} must be true or false, got {raw!r}")
    return raw in ("true", "1", "yes")


def _list(env: Mapping[str, str], key: str, lower: bool = False) -> tuple[str, ...]:
    """A comma-separated list (blanks dropped)."""
    items = (item.strip() for item in (env.get(key) or "").split(","))
    return tuple(item.lower() if lower else item for item in items if item)


def _hosts_or_ranges(env: Mapping[str, str], key: str) -> tuple[str, ...]:
    """Host names (`host`, `host:port`) and CIDR ranges (`10.0.0.0/16`)."""
    entries = _list(env, key)
    for entry in entries:
        if "/" in entry:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise SettingsError(f"{key}: {entry!r} is neither a host nor a CIDR range") from None
    return entries


def _signing_keys(env: Mapping[str, str]) -> tuple[bytes, ...]:
    """BERTH_TOKEN_SIGNING_KEY: one base64 key, or several separated by commas (first signs)."""
    raw = env.get("BERTH_TOKEN_SIGNING_KEY")
    if not raw:
        return ()
    keys = []
    for part in raw.split(","):
        try:
            key = base64.b64decode(part.strip(), validate=True)
        except ValueError:
            raise SettingsError("BERTH_TOKEN_SIGNING_KEY must be base64 (several keys: comma-separated)") from None
        if len(key) < 32:
            raise SettingsError("each BERTH_TOKEN_SIGNING_KEY key must hold at least 32 bytes")
        keys.append(key)
    return tuple(keys)


def _repository_patterns(env: Mapping[str, str], key: str) -> tuple[str, ...]:
    """Comma-separated repository patterns: `*`, an exact name, or `prefix/*`."""
    patterns = tuple(p.strip() for p in (env.get(key) or "").split(",") if p.strip())
    for pattern in patterns:
        try:
            if pattern != "*":
                validate_name(pattern.removesuffix("/*"))
        except RegistryError:
            raise SettingsError(f"{key}: {pattern!r} is not a repository name, prefix/* or *") from None
    return patterns


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    account = env.get("BERTH_STORAGE_ACCOUNT")
    suffix = env.get("BERTH_STORAGE_SUFFIX", "core.windows.net")
    blob_endpoint = env.get("BERTH_BLOB_ENDPOINT") or (account and f"https://{account}.blob.{suffix}")
    table_endpoint = env.get("BERTH_TABLE_ENDPOINT") or (account and f"https://{account}.table.{suffix}")
    queue_endpoint = (env.get("BERTH_QUEUE_ENDPOINT") or (account and f"https://{account}.queue.{suffix}")
                      or (blob_endpoint and blob_endpoint.replace(".blob.", ".queue.", 1)))
    tenant = env.get("BERTH_ENTRA_TENANT_ID") or None
    authority = env.get("BERTH_ENTRA_AUTHORITY_HOST") or "login.microsoftonline.com"
    if bool(env.get("BERTH_ADMIN_USER")) != bool(env.get("BERTH_ADMIN_PASSWORD")):
        raise SettingsError("set both BERTH_ADMIN_USER and BERTH_ADMIN_PASSWORD, or neither")
    if tenant and not env.get("BERTH_ENTRA_AUDIENCE"):
        raise SettingsError("BERTH_ENTRA_TENANT_ID needs BERTH_ENTRA_AUDIENCE (the registry app's id / ID URI)")
    if env.get("BERTH_EVENTGRID_KEY") and not env["BERTH_EVENTGRID_KEY"].startswith(("env:", "file:", "keyvault:")):
        raise SettingsError("BERTH_EVENTGRID_KEY is a reference (env:NAME, file:/path or a Key Vault secret URI)")
    topic = env.get("BERTH_EVENTGRID_TOPIC_ENDPOINT") or ""
    if topic and not topic.startswith("https://") and not _bool(env, "BERTH_EVENTGRID_ALLOW_HTTP"):
        raise SettingsError("BERTH_EVENTGRID_TOPIC_ENDPOINT must be https:// (its key or token goes with every event)")
    prefix = env.get("BERTH_TABLE_PREFIX", "berth")
    if not prefix.isalnum() or not prefix[:1].isalpha() or len(prefix) > 40:
        raise SettingsError("BERTH_TABLE_PREFIX must be letters and digits, starting with a letter")
    return Settings(
        storage_connection_string=env.get("BERTH_STORAGE_CONNECTION_STRING") or None,
        blob_endpoint=blob_endpoint or None,
        table_endpoint=table_endpoint or None,
        queue_endpoint=queue_endpoint or None,
        managed_identity_client_id=env.get("BERTH_MANAGED_IDENTITY_CLIENT_ID") or None,
        blob_container=env.get("BERTH_BLOB_CONTAINER", "berth"),
        table_prefix=prefix,
        blob_delivery=_choice(env, "BERTH_BLOB_DELIVERY", "redirect", ("redirect", "proxy")),
        sas_ttl_seconds=_int(env, "BERTH_SAS_TTL_SECONDS", 600, 30, 7 * 24 * 3600),
        upload_ttl_seconds=_int(env, "BERTH_UPLOAD_TTL_SECONDS", 24 * 3600, 60, 30 * 24 * 3600),
        block_size=_int(env, "BERTH_BLOCK_SIZE", 8 * MiB, 64 * 1024, 100 * MiB),
        blocks_in_flight=_int(env, "BERTH_BLOCKS_IN_FLIGHT", 2, 1, 32),
        max_manifest_bytes=_int(env, "BERTH_MAX_MANIFEST_BYTES", 4 * MiB, 1024, 32 * MiB),
        max_page_size=_int(env, "BERTH_MAX_PAGE_SIZE", 1000, 1, 10000),
        referrers_page_size=_int(env, "BERTH_REFERRERS_PAGE_SIZE", 100, 1, 1000),
        storage_timeout_seconds=_int(env, "BERTH_STORAGE_TIMEOUT_SECONDS", 10, 1, 60),
        repository_delete_settle_override=_optional_int(env, "BERTH_REPOSITORY_DELETE_SETTLE_SECONDS", 0, 600),
        gc_grace_seconds=_int(env, "BERTH_GC_GRACE_SECONDS", 24 * 3600, 0, 365 * 24 * 3600),
        gc_settle_seconds=_int(env, "BERTH_GC_SETTLE_SECONDS", 60, 0, 3600),
        retention_days=_optional_int(env, "BERTH_RETENTION_DAYS", 0, 365),
        retention_margin_override=_optional_int(env, "BERTH_RETENTION_MARGIN_SECONDS", 0, 3600),
        cache_tag_ttl_seconds=_int(env, "BERTH_CACHE_TAG_TTL_SECONDS", 3600, 0, 30 * 24 * 3600),
        upstream_private_hosts=_hosts_or_ranges(env, "BERTH_UPSTREAM_PRIVATE_HOSTS"),
        webhooks_ttl_seconds=_int(env, "BERTH_WEBHOOKS_TTL_SECONDS", 10, 0, 3600),
        event_look_after_seconds=_int(env, "BERTH_EVENT_LOOK_AFTER_SECONDS", 2, 0, 60),
        event_sweep_age_seconds=_int(env, "BERTH_EVENT_SWEEP_AGE_SECONDS", 60, 1, 3600),
        event_sweep_seconds=_int(env, "BERTH_EVENT_SWEEP_SECONDS", 60, 1, 3600),
        events_worker=not env.get("BERTH_EVENTS_WORKER") or _bool(env, "BERTH_EVENTS_WORKER"),
        create_storage=not env.get("BERTH_CREATE_STORAGE") or _bool(env, "BERTH_CREATE_STORAGE"),
        request_log=_choice(env, "BERTH_REQUEST_LOG", "changes", REQUEST_LOG_LEVELS),
        webhook_timeout_seconds=_int(env, "BERTH_WEBHOOK_TIMEOUT_SECONDS", 10, 1, 120),
        webhook_attempts=_int(env, "BERTH_WEBHOOK_ATTEMPTS", 8, 1, 50),
        webhook_backoff_seconds=_int(env, "BERTH_WEBHOOK_BACKOFF_SECONDS", 10, 0, 3600),
        webhook_allowed_hosts=_list(env, "BERTH_WEBHOOK_ALLOWED_HOSTS", lower=True),
        webhook_private_hosts=_hosts_or_ranges(env, "BERTH_WEBHOOK_PRIVATE_HOSTS"),
        event_log_days=_int(env, "BERTH_EVENT_LOG_DAYS", 7, 1, 365),
        eventgrid_topic_endpoint=env.get("BERTH_EVENTGRID_TOPIC_ENDPOINT") or None,
        eventgrid_key=env.get("BERTH_EVENTGRID_KEY") or None,
        test_event_fault=_choice(env, "BERTH_TEST_EVENT_FAULT", "", ("", "no-message", "crash")),
        auth=_choice(env, "BERTH_AUTH", "none", ("none", "token")),
        local_data_dir=env.get("BERTH_LOCAL_DATA_DIR") or ".berth-data",
        public_url=(env.get("BERTH_PUBLIC_URL") or "").rstrip("/") or None,
        service=env.get("BERTH_SERVICE") or None,
        token_signing_keys=_signing_keys(env),
        access_token_ttl_seconds=_int(env, "BERTH_ACCESS_TOKEN_TTL_SECONDS", 1200, 60, 24 * 3600),
        refresh_token_ttl_seconds=_int(env, "BERTH_REFRESH_TOKEN_TTL_SECONDS", 3 * 3600, 300, 30 * 24 * 3600),
        entra_refresh_token_ttl_seconds=_int(env, "BERTH_ENTRA_REFRESH_TOKEN_TTL_SECONDS", 3 * 3600, 300,
                                             24 * 3600),
        auth_failure_limit=_int(env, "BERTH_AUTH_FAILURE_LIMIT", 10, 1, 10000),
        auth_failure_window_seconds=_int(env, "BERTH_AUTH_FAILURE_WINDOW_SECONDS", 300, 10, 24 * 3600),
        trusted_proxy_hops=_int(env, "BERTH_TRUSTED_PROXY_HOPS", 0, 0, 10),
        admin_user=env.get("BERTH_ADMIN_USER") or None,
        admin_password=env.get("BERTH_ADMIN_PASSWORD") or None,
        anonymous_pull=_bool(env, "BERTH_ANONYMOUS_PULL"),
        docker_renditions=_repository_patterns(env, "BERTH_DOCKER_RENDITIONS"),
        entra_tenant_id=tenant,
        entra_audiences=tuple(a.strip() for a in (env.get("BERTH_ENTRA_AUDIENCE") or "").split(",") if a.strip()),
        entra_jwks_url=env.get("BERTH_ENTRA_JWKS_URL")
        or (tenant and f"https://{authority}/{tenant}/discovery/v2.0/keys")
        or None,
        entra_authority_host=authority,
        entra_jwks_cooldown_seconds=_int(env, "BERTH_ENTRA_JWKS_COOLDOWN_SECONDS", 30, 0, 3600),
    )
