"""The worker's log at a pipeline load: diffusers' warning about an empty list of float32 modules is dropped (it
came once per component at every load, naming nothing); the same warning naming real modules stays."""

from __future__ import annotations

import logging

from core.pipelines.loader import _NoEmptyFp32Warning


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("diffusers.models.modeling_utils", logging.WARNING, __file__, 1, message, None, None)


def test_only_the_empty_list_warning_is_dropped():
    f = _NoEmptyFp32Warning()
    empty = "There are modules in UNet2DConditionModel that should be kept in float32: []. Casting directly..."
    real = "There are modules in WanTransformer3DModel that should be kept in float32: ['rope']. Casting directly..."
    assert not f.filter(record(empty))
    assert f.filter(record(real)) and f.filter(record("any other warning"))
    assert any(isinstance(x, _NoEmptyFp32Warning) for x in logging.getLogger("diffusers.models.modeling_utils").filters)
