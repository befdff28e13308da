"""Scanning A1111's and ComfyUI's folders as they are found on disk: links (dangling, to files, to folders), FIFOs, a
crafted header, and concurrent rescans. Small files written here; no torch model is built."""

from __future__ import annotations

import json
import os
import struct
import threading

import pytest
import torch
from safetensors.torch import save_file

from core.registry import ModelRegistry, read_safetensors_header

SD1_KEYS = {  # what the family detection reads of an SD 1.x checkpoint in the original layout
    "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(8, 4),
}


def lora(path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(2, 4, generator=g)}, path)


def test_links_and_fifos_in_the_folders_neither_stop_nor_hang_the_scan(tmp_path):
    lora(tmp_path / "Lora" / "real.safetensors")
    (tmp_path / "Lora" / "gone.safetensors").symlink_to(tmp_path / "nowhere.safetensors")  # dangling
    lora(tmp_path / "elsewhere" / "shared" / "linked.safetensors", 1)
    (tmp_path / "Lora" / "shared").symlink_to(tmp_path / "elsewhere" / "shared")  # a linked sub-folder: followed
    (tmp_path / "Lora" / "loop").symlink_to(tmp_path / "Lora")  # a loop: bounded by the depth limit
    (tmp_path / "checkpoints").mkdir()
    os.mkfifo(tmp_path / "checkpoints" / "pipe.safetensors")  # opening it would block forever
    done: list[ModelRegistry] = []
    scan = threading.Thread(target=lambda: done.append(ModelRegistry([tmp_path])), daemon=True)
    scan.start()
    scan.join(60)
    assert not scan.is_alive(), "the scan hung on the FIFO"
    assert done[0].lora_names() == ["linked", "real"]
    assert done[0].list() == []


def test_a_crafted_header_is_refused_before_it_is_parsed(tmp_path):
    big = tmp_path / "big.safetensors"
    header = json.dumps({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode().ljust(9 << 20)
    big.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(ValueError, match="a header of"):
        read_safetensors_header(big)  # 9 MB of JSON would take ~25x that in memory: refused by its length alone
    odd = tmp_path / "odd.safetensors"
    body = json.dumps({"a": {"shape": "x" * 100}, "b": {"shape": [True]}, "c": {"shape": [2, 3]}}).encode()
    odd.write_bytes(struct.pack("<Q", len(body)) + body)
    assert list(read_safetensors_header(odd)) == ["c"]  # shapes that are not short lists of ints are dropped


def test_concurrent_rescans_hash_a_new_checkpoint_once(tmp_path):
    registry = ModelRegistry([tmp_path])
    (tmp_path / "checkpoints").mkdir()
    save_file({**SD1_KEYS, "pad": torch.zeros(2**20)}, tmp_path / "checkpoints" / "new-model.safetensors")
    start = threading.Barrier(6)

    def rescan() -> None:
        start.wait()
        registry.refresh()

    threads = [threading.Thread(target=rescan) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [e.id for e in registry.list()] == ["new-model"]
    assert registry.hashes.hashed == 1  # one scan ran; the others waited for it and used its result
