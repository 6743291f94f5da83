"""Manage API keys, their default webhooks and tenants' rate limits from a shell, as the
admin API does.

    python -m ops.keys create TENANT [--name NAME] [--expires-days N]
    python -m ops.keys list [--tenant TENANT]
    python -m ops.keys revoke KEY_ID
    python -m ops.keys set-webhook KEY_ID (URL | --clear)
    python -m ops.keys set-limits TENANT [--rpm N] [--tpm N] [--concurrent N]

It reads ``CHATQ_MONGO_URL`` and ``CHATQ_MONGO_DB`` like every chatq process. A created
key is printed once; MongoDB keeps only its digest (``shared/keystore.py``). A default
webhook is checked as the API checks a job's ``webhook`` (with ``CHATQ_ENV`` and
``CHATQ_WEBHOOKS__*`` of this shell: give it the API's). Every API process honours a
change within seconds, with no restart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta

from shared.errors import ChatqError, UnsafeWebhook
from shared.keystore import KeyStore
from shared.mongo import make_mongo_client
from shared.schemas import check_webhook_url
from shared.settings import RateLimits, Settings, load_settings
from shared.webhooks import TargetPolicy, check_target


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ops.keys", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="a new key for a tenant (printed once)")
    create.add_argument("tenant")
    create.add_argument("--name", default="")
    create.add_argument("--expires-days", type=float)
    listing = sub.add_parser("list", help="stored keys, never the keys themselves")
    listing.add_argument("--tenant")
    revoke = sub.add_parser("revoke", help="revoke a key by the id `list` shows")
    revoke.add_argument("key_id")
    hook = sub.add_parser("set-webhook", help="a key's default webhook (batches and jobs "
                                              "made with it that name none)")
    hook.add_argument("key_id")
    which = hook.add_mutually_exclusive_group(required=True)
    which.add_argument("url", nargs="?", help="an https URL (http in development)")
    which.add_argument("--clear", action="store_true", help="no default webhook")
    limits = sub.add_parser("set-limits", help="a tenant's rate limits")
    limits.add_argument("tenant")
    limits.add_argument("--rpm", type=int, help="requests per minute")
    limits.add_argument("--tpm", type=int, help="tokens per minute (prompt + max_tokens)")
    limits.add_argument("--concurrent", type=int, help="unfinished jobs at once")
    return parser


async def checked_webhook(url: str, settings: Settings) -> str:
    """The URL if a job could name it as its ``webhook`` (its shape, then the target
    policy of these settings); else :class:`UnsafeWebhook` naming ``webhook``."""
    try:
        check_webhook_url(url)
    except ValueError as exc:
        raise UnsafeWebhook(str(exc)) from exc
    await check_target(url, TargetPolicy.from_settings(settings))
    return url


async def _set_webhook(store: KeyStore, args: argparse.Namespace, settings: Settings) -> int:
    url = None if args.clear else await checked_webhook(args.url, settings)
    stored = await store.set_webhook(args.key_id, url)
    if stored is None:
        print(f"no key {args.key_id!r}", file=sys.stderr)
        return 1
    print(json.dumps(stored.view()))
    return 0


async def _run(args: argparse.Namespace) -> int:
    settings = load_settings()
    client = make_mongo_client(settings)
    store = KeyStore(client, settings.mongo_db)
    try:
        if args.command == "create":
            expires = (datetime.now(UTC) + timedelta(days=args.expires_days)
                       if args.expires_days else None)
            key, stored = await store.create(args.tenant, args.name, expires)
            print(json.dumps({**stored.view(), "key": key}))
        elif args.command == "list":
            for stored in await store.list(args.tenant):
                print(json.dumps(stored.view()))
        elif args.command == "revoke":
            revoked = await store.revoke(args.key_id)
            if revoked is None:
                print(f"no key {args.key_id!r}", file=sys.stderr)
                return 1
            print(json.dumps(revoked.view()))
        elif args.command == "set-webhook":
            return await _set_webhook(store, args, settings)
        else:
            limits = RateLimits(requests_per_minute=args.rpm, tokens_per_minute=args.tpm,
                                concurrent_jobs=args.concurrent)
            await store.set_limits(args.tenant, limits)
            print(json.dumps({"tenant": args.tenant,
                              "rate_limits": limits.model_dump(exclude_none=True)}))
    except ChatqError as exc:
        print(exc.message, file=sys.stderr)
        return 1
    finally:
        await client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(_run(_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
