"""``GET /v1/usage``: the tenant's own requests and tokens, per day and model.

Counted by the lifecycle's finish script as each job ends (``account_tenant`` in
shared/lua/lib.lua), so it adds up to the jobs' own ``usage`` and agrees across API
processes; kept ``USAGE_TTL_S`` (400 days). Only the caller's tenant is shown.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from redis.exceptions import RedisError

from api.deps import ServicesDep, TenantDep
from shared.errors import Unavailable

router = APIRouter(prefix="/v1", tags=["usage"])

DAY_S = 86400
COUNTS = ("requests", "prompt_tokens", "completion_tokens")


@router.get("/usage")
async def usage(svc: ServicesDep, tenant: TenantDep,
                days: Annotated[int, Query(ge=1, le=400)] = 30) -> dict[str, Any]:
    """The last ``days`` days (UTC, today included) of the tenant's finished jobs: one
    entry per day and model, newest first, and the totals."""
    today = int(time.time() // DAY_S)
    wanted = list(range(today, today - days, -1))
    try:
        async with svc.redis.pipeline(transaction=False) as pipe:
            for day in wanted:
                pipe.hgetall(svc.keys.usage(tenant, day))
            hashes = await pipe.execute()
    except RedisError as exc:
        raise Unavailable("Redis is unreachable") from exc
    data = []
    totals = dict.fromkeys(COUNTS, 0)
    for day, counts in zip(wanted, hashes, strict=True):
        by_model: dict[str, dict[str, int]] = {}
        for field, value in counts.items():
            what, _, model = field.partition("|")
            if what in COUNTS:
                by_model.setdefault(model, dict.fromkeys(COUNTS, 0))[what] = int(value)
        for model, row in sorted(by_model.items()):
            data.append({"date": datetime.fromtimestamp(day * DAY_S, UTC).date().isoformat(),
                         "model": model, **row,
                         "total_tokens": row["prompt_tokens"] + row["completion_tokens"]})
            for what in COUNTS:
                totals[what] += row[what]
    return {"object": "list", "tenant": tenant, "data": data,
            "totals": {**totals,
                       "total_tokens": totals["prompt_tokens"] + totals["completion_tokens"]}}
