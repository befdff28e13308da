"""``bench/step_cache.py --smoke``: the quality-vs-speed table on the bundled digits model, and the tiny transformer
pipelines' speed rows, keep working (the figures themselves live in bench/README.md)."""

from __future__ import annotations

from bench.step_cache import main


def test_step_cache_smoke(capsys):
    assert main(["--smoke", "--models", "digits", "--pipelines"]) == 0
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0].strip("| ").replace(" (default)", ""): line for line in out.splitlines()}
    assert "| 0.00 |" in rows["uncached"] and "| 0.66 |" in rows["deep interval=3"]  # 33 of 50 calls reused
    assert "Tiny random transformer pipelines" in out and "FluxPipeline" in out and "WanPipeline" in out
