"""The caller's webhook signing key."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from api.deps import backends, tenant
from api.state import Backends
from core.webhooks import tenant_secret

router = APIRouter()


class WebhookSecret(BaseModel):
    key: str = Field(description="whsec_… key: verify deliveries with any Standard Webhooks library")


@router.get("/webhooks/secret", response_model=WebhookSecret, name="webhook_secret")
async def webhook_secret(t: str = Depends(tenant), b: Backends = Depends(backends)) -> WebhookSecret:
    """The key this tenant's webhook deliveries are signed with (each tenant has its own)."""
    return WebhookSecret(key=tenant_secret(b.settings.resolved_webhook_secret(), t))
