"""``bench/gpu.py --smoke``: the GPU benchmark keeps working (tiny configs on the CPU), and its fast-path modes give
the plain model's output."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_gpu_bench_smoke_prints_every_model_and_mode():
    run = subprocess.run(
        [sys.executable, "bench/gpu.py", "--smoke", "--batches", "1,4"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in run.stdout.splitlines() if line.startswith("| ") and "(tiny)" in line]
    seen = {(r[0].strip(), r[1].strip(), r[2].strip()) for r in rows}
    for model in ("SD 1.5 UNet (tiny)", "SDXL UNet (tiny)"):
        for batch in ("1", "4"):
            for mode in ("diffusers", "fast path", "compiled"):
                assert (model, batch, mode) in seen, (model, batch, mode, run.stdout)
    assert ("Flux-class transformer (tiny)", "1", "compiled") in seen
    for r in rows:
        assert float(r[3]) > 0 and float(r[4]) > 0  # it/s, images/s
        assert float(r[7]) < 1e-3, r  # fp32 on the CPU: the fast path and the compiled model change no output
