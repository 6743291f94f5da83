"""``/v1/webhooks``: what a tenant needs to verify the webhooks chatq sends it."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api import webhooks
from api.deps import ServicesDep, TenantDep

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


class WebhookSecret(BaseModel):
    secret: str = Field(
        description="The tenant's signing secret, `whsec_` + base64 of the HMAC key. Made "
                    "once per tenant; every webhook of the tenant's jobs is signed with it.")
    scheme: str = Field(
        "standard-webhooks-v1",
        description="`webhook-signature` is `v1,` + base64 HMAC-SHA256 of "
                    "`{webhook-id}.{webhook-timestamp}.{body}` (https://www.standardwebhooks.com).")


@router.get("/secret", response_model=WebhookSecret)
async def get_secret(svc: ServicesDep, tenant: TenantDep) -> WebhookSecret:
    """The secret that signs this tenant's webhooks (made on first use)."""
    return WebhookSecret(secret=await webhooks.tenant_secret(svc, tenant))
