"""Single-file checkpoints and ControlNets (A1111's and ComfyUI's folders) loaded with diffusers' ``from_single_file``,
offline: the configs come from the folder the registry chose (the sidecar ``<stem>.config/`` or the family's shipped
one in ``single_file_configs/``), never from the hub.

The shipped configs hold no tokenizer files: CLIP's tokenizer (every Stable Diffusion text encoder's) is built here
from CLIP's byte-pair merges, shipped once (``single_file_configs/clip``, MIT, as in the PyPI packages open_clip_torch
and openai-clip), with each family's own tokenizer settings (``tokenizer*/tokenizer_config.json``: SD 2's and SDXL's
second tokenizer pad with ``!``). A sidecar config folder brings its own tokenizers.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import tempfile
import threading
from pathlib import Path

from core.errors import JobError
from core.registry import SHIPPED_CONFIGS, SingleFile, TensorShapes, detect_family, read_safetensors_header

log = logging.getLogger("diffuserve.pipelines")

CLIP_MERGES = SHIPPED_CONFIGS / "clip" / "bpe_simple_vocab_16e6.txt.gz"
CLIP_MERGES_USED = 49152 - 256 - 2  # CLIP's SimpleTokenizer reads this many merges: a vocabulary of 49408
_lock = threading.Lock()
_clip_files: tuple[str, str] | None = None


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's and CLIP's byte-level alphabet: every byte as a printable character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def clip_vocab(merges_gz: Path = CLIP_MERGES) -> tuple[dict[str, int], list[str]]:
    """(vocab, merges) of CLIP's tokenizer, as CLIP's own ``SimpleTokenizer`` builds them from its merges file: the
    256 byte characters, the same word-final (``</w>``), one token per merge, then the two special tokens."""
    lines = gzip.decompress(merges_gz.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : CLIP_MERGES_USED + 1]
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_files() -> tuple[str, str]:
    """(vocab.json, merges.txt) of CLIP's tokenizer, written once per process to a temporary folder."""
    global _clip_files
    with _lock:
        if _clip_files is None:
            vocab, merges = clip_vocab()
            folder = Path(tempfile.mkdtemp(prefix="diffuserve-clip-"))
            (folder / "vocab.json").write_text(json.dumps(vocab))
            (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
            _clip_files = str(folder / "vocab.json"), str(folder / "merges.txt")
        return _clip_files


def shipped_tokenizers(config: Path) -> dict:
    """CLIP tokenizers for each ``tokenizer*/`` of a shipped config folder (its tokenizer_config.json's settings)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_files()
    out = {}
    for sub in sorted(config.glob("tokenizer*")):
        settings = json.loads((sub / "tokenizer_config.json").read_text())
        out[sub.name] = CLIPTokenizer(vocab, merges, **settings)
    return out


def realign(module) -> None:
    """Give each tensor its own freshly allocated storage. ``from_single_file`` leaves the weights as views at
    arbitrary offsets of the file's buffer, and CPU kernels round differently on unaligned memory: realigned, a
    single file draws on the CPU exactly what the same weights in diffusers' folders draw (a GPU copies anyway)."""
    for t in [*module.parameters(), *module.buffers()]:
        t.data = t.data.clone()


def load_pipeline(pipeline_class: str, sf: SingleFile, dtype, device: str = "cpu"):
    """A diffusers pipeline from a single-file checkpoint: components converted by ``from_single_file`` with the
    configs of ``sf.config``; the tokenizers built here unless the (sidecar) config folder has its own. JobError
    naming what is missing, never a hub download."""
    import diffusers
    import torch
    from huggingface_hub.errors import HFValidationError

    cls = getattr(diffusers, pipeline_class)
    extra = {} if sf.sidecar else shipped_tokenizers(sf.config)
    if "safety_checker" in cls._get_signature_keys(cls)[0]:
        extra.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    try:
        pipe = cls.from_single_file(
            str(sf.path), config=str(sf.config), torch_dtype=dtype, local_files_only=True, **extra
        )
    except (OSError, ValueError, HFValidationError, diffusers.loaders.single_file_utils.SingleFileComponentError) as e:
        raise JobError(
            "model_load_failed",
            f"single-file checkpoint {sf.rel} ({sf.family}) could not be loaded with the config in "
            f"{sf.config.name}: {_shown(e, sf)}. A checkpoint whose shapes differ from its family's usual ones "
            f"needs a diffusers config folder beside it, named {sf.path.stem}.config",
        ) from e
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            missing = [k for k, t in [*component.named_parameters(), *component.named_buffers()] if t.is_meta]
            if missing:  # diffusers leaves what the file lacks on the meta device: say so, not "cannot copy"
                raise JobError(
                    "model_load_failed",
                    f"single-file checkpoint {sf.rel} ({sf.family}): {name} lacks {missing[:5]} "
                    f"({len(missing)} tensors); its layout is not {sf.family}'s, or its config "
                    f"({sf.config.name}) does not match it",
                )
            if device == "cpu":
                realign(component)
    return pipe


def _shown(e: BaseException, sf: SingleFile) -> str:
    """A loader's error as the job shows it (to the tenant): the server's folders named by the checkpoint's own name
    and its config folder's, never by their paths; at most 500 characters."""
    text = str(e).replace(str(sf.path), sf.rel).replace(str(sf.config), sf.config.name)
    return re.sub(r"(?<![\w.])/(?:[^\s'\"/]+/)+", "…/", text)[:500]


def load_controlnet(sf: SingleFile, dtype, device: str = "cpu"):
    """A ControlNet from a single file in the original layout, with ``sf.config``'s config.json."""
    from diffusers import ControlNetModel

    try:
        model = ControlNetModel.from_single_file(
            str(sf.path), config=str(sf.config), torch_dtype=dtype, local_files_only=True
        )
    except (OSError, ValueError) as e:
        raise JobError(
            "model_load_failed",
            f"single-file ControlNet {sf.rel} ({sf.family}) could not be loaded with the config in "
            f"{sf.config.name}: {_shown(e, sf)}; put its diffusers config.json in {sf.path.stem}.config beside it",
        ) from e
    if device == "cpu":
        realign(model)
    return model


def diffusers_model_type(path: Path) -> str:
    """diffusers' own reading of a checkpoint's type (``infer_diffusers_model_type``), from its header alone: what
    the registry's torch-free ``detect_family`` is checked against."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    return infer_diffusers_model_type(TensorShapes(read_safetensors_header(path)))


def family_of_file(path: Path) -> tuple[str, str | None] | None:
    return detect_family(read_safetensors_header(path))
