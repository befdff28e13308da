"""ComfyUI's HTTP and websocket API on the v1 job contract (issue 23; being built)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
