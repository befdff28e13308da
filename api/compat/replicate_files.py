"""Replicate's file API (``/v1/files``) on the service's uploads (issue 23; being built)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
