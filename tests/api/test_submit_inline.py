"""Which embedded submissions run on the event loop (``api.submit.light``): only those that touch memory alone. A
request that names an image, an upload or a webhook, or a model the registry would rescan its folders for (hashing
any new checkpoint), runs in the threadpool, so it can never stall every other request."""

from __future__ import annotations

from types import SimpleNamespace

from api.submit import light
from core.registry import ModelRegistry
from core.schemas import Img2ImgRequest, Txt2ImgRequest
from tests.conftest import REPO


def backends(distributed: bool = False):
    return SimpleNamespace(settings=SimpleNamespace(distributed=distributed), registry=ModelRegistry([REPO / "models"]))


def test_a_known_model_without_images_runs_inline_in_embedded_mode_only():
    body = Txt2ImgRequest(model="digits", prompt="7")
    assert light(backends(), body)
    assert not light(backends(distributed=True), body)  # a remote store: every call is I/O


def test_a_model_not_yet_scanned_goes_to_the_threadpool(tmp_path):
    b = backends()
    assert not b.registry.known("not-there-yet")
    assert not light(b, Txt2ImgRequest(model="not-there-yet", prompt="7"))
    assert b.registry.known("digits")  # known() never rescanned: the entry came from the first scan


def test_a_request_with_a_webhook_goes_to_the_threadpool():
    """Its host is resolved at admission (the SSRF rules): a slow resolver must not stall the loop."""
    assert not light(backends(), Txt2ImgRequest(model="digits", prompt="7", webhook="https://hooks.example.com/x"))


def test_a_request_naming_an_image_or_an_upload_goes_to_the_threadpool():
    png = "data:image/png;base64,iVBORw0KGgo="
    assert not light(backends(), Img2ImgRequest(model="digits", prompt="7", image=png))
    assert not light(backends(), Img2ImgRequest(model="digits", prompt="7", image="upl_" + "0" * 32))
