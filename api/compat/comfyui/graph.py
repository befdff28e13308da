"""Reading a ComfyUI API-format graph as ONE v1 job (never executed node by node).

The graph is walked back from its output nodes (``SaveImage``, ``PreviewImage``, as ComfyUI runs only what feeds an
output): ``VAEDecode`` <- one sampler (``KSampler`` / ``KSamplerAdvanced``) <- its model (``LoraLoader``* <-
``CheckpointLoaderSimple``), its conditioning (``CLIPTextEncode``, through at most one ``ControlNetApply`` /
``ControlNetApplyAdvanced``) and its latent (``EmptyLatentImage``: txt2img; ``VAEEncode``: img2img;
``VAEEncodeForInpaint`` or ``SetLatentNoiseMask``: inpaint). What the job cannot do exactly (an unknown node, a
second sampler, a step window, a LoRA on the U-Net only, a ControlNet for part of the steps) is a :class:`NodeError`
naming the node: the caller answers 400 in ComfyUI's shape. Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from api.compat.comfyui.nodes import SERVED
from core.schemas import MAX_SEED, UPLOAD_ID_PATTERN

MAX_NODES = 64  # the node types served make graphs of ~20 nodes; a bound on what a body makes us walk
MAX_PREFIX = 64
SEED_MODULUS = MAX_SEED + 1  # ComfyUI seeds go to 2**64 - 1, ours to 2**32 - 1: folded, and the job records the seed
UPLOAD_IN_NAME = re.compile(r"upl_[0-9a-f]{32}")
OUTPUT_NODES = ("SaveImage", "PreviewImage")
SAMPLERS = ("KSampler", "KSamplerAdvanced")


class GraphError(Exception):
    """A graph refused before any node is read (ComfyUI's ``invalid_prompt`` / ``prompt_no_outputs``)."""

    def __init__(self, type: str, message: str, details: str = "", node: tuple[str, str] | None = None):
        super().__init__(message)
        self.type, self.message, self.details, self.node = type, message, details, node


class NodeError(Exception):
    """One node's input that cannot be served: ComfyUI's ``node_errors[node_id]``."""

    def __init__(self, node_id: str, class_type: str, type: str, message: str, details: str, input_name: str = ""):
        super().__init__(f"{class_type} #{node_id}: {message}: {details}")
        self.node_id, self.class_type, self.type = node_id, class_type, type
        self.message, self.details, self.input_name = message, details, input_name


@dataclass
class ImageUse:
    """How a ``LoadImage`` / ``LoadImageMask`` upload feeds the job."""

    node_id: str
    upload_id: str
    kind: str  # "image" | "alpha_mask" (LoadImage's MASK: 1 - alpha) | "channel_mask" (LoadImageMask)
    channel: str = "alpha"
    grow: int | None = None  # VAEEncodeForInpaint: the mask rounded and grown by this many pixels; None: as is


@dataclass
class Plan:
    """The one job a graph means: its v1 fields (less what needs the store: scheduler, image sizes, uploads)."""

    task: str  # txt2img | img2img | inpaint | controlnet
    fields: dict[str, Any]
    sampler: tuple[str, str]  # ComfyUI's (sampler_name, scheduler)
    sampler_node: str
    image: ImageUse | None = None
    mask: ImageUse | None = None
    control: ImageUse | None = None
    # node id -> [class_type, filename prefix, "output" | "temp", "image" | "control" (the detected map)]
    outputs: dict[str, list] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # node ids in the order ComfyUI would run them
    names: dict[str, tuple[str, str]] = field(default_factory=dict)  # our field -> (node id, ComfyUI input)
    graph: dict[str, Any] = field(default_factory=dict)  # the graph as kept (class_type and inputs only)


class Reader:
    def __init__(self, graph: Any):
        if not isinstance(graph, dict) or not graph:
            raise GraphError("invalid_prompt", "Prompt is not a node graph", "an object of node id -> node")
        if len(graph) > MAX_NODES:
            raise GraphError("invalid_prompt", "Prompt too large", f"at most {MAX_NODES} nodes")
        self.g: dict[str, dict] = {}
        for node_id, node in graph.items():
            if len(str(node_id)) > 32:  # never cut: two ids that share a prefix would become one node
                details = f"Node ID '#{str(node_id)[:32]}…': at most 32 characters"
                raise GraphError("invalid_prompt", "Node id too long", details)
            nid = str(node_id)
            if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
                raise GraphError(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    f"Node ID '#{nid}'",
                )
            inputs = node.get("inputs", {})
            if not isinstance(inputs, dict):
                raise GraphError("invalid_prompt", "Node inputs are not an object", f"Node ID '#{nid}'")
            ctype = node["class_type"][:64]
            if ctype not in SERVED:
                raise GraphError(
                    "invalid_prompt",
                    f"Cannot execute because node {ctype} does not exist.",
                    f"Node ID '#{nid}'",
                    (nid, ctype),
                )
            self.g[nid] = {"class_type": ctype, "inputs": inputs}
        self.order: list[str] = []

    # -- inputs ----------------------------------------------------------------------------------------------------
    def ctype(self, nid: str) -> str:
        return self.g[nid]["class_type"]

    def err(self, nid: str, type: str, message: str, details: str, name: str = "") -> NodeError:
        return NodeError(nid, self.ctype(nid), type, message, details, name)

    def raw(self, nid: str, name: str) -> Any:
        inputs = self.g[nid]["inputs"]
        if name not in inputs:
            raise self.err(nid, "required_input_missing", "Required input is missing", name, name)
        return inputs[name]

    def link(self, nid: str, name: str, allowed: dict[str, int | tuple[int, ...]]) -> tuple[str, int]:
        """The node (and output slot) feeding ``name``, which must be one of ``allowed`` (class_type -> slot(s))."""
        value = self.raw(nid, name)
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)):
            raise self.err(nid, "invalid_input_type", "Input is not a link", f"{name}: expected [node_id, slot]", name)
        src, slot = str(value[0]), value[1]
        if src not in self.g:
            raise self.err(nid, "invalid_input_type", "Linked node does not exist", f"{name}: node '{src[:32]}'", name)
        ctype = self.ctype(src)
        slots = allowed.get(ctype)
        ok = slots is not None and (slot in slots if isinstance(slots, tuple) else slot == slots)
        if not ok:
            served = ", ".join(allowed)
            raise self.err(
                nid,
                "not_supported",
                "Input not supported",
                f"{name}: {ctype} output {slot} is not served here (served: {served})",
                name,
            )
        return src, slot

    def number(self, nid: str, name: str, lo: float, hi: float, integer: bool = False) -> float | int:
        value = self.raw(nid, name)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (integer and not isinstance(value, int))
            or (isinstance(value, float) and not math.isfinite(value))  # NaN, Infinity: Python's JSON accepts them
        ):
            kind = "INT" if integer else "FLOAT"
            raise self.err(
                nid,
                "invalid_input_type",
                "Failed to convert an input value to a " + kind + " value",
                f"{name}, {str(value)[:32]}",
                name,
            )
        if value < lo:
            raise self.err(nid, "value_smaller_than_min", f"Value {value} smaller than min of {lo}", f"{name}", name)
        if value > hi:
            raise self.err(nid, "value_bigger_than_max", f"Value {value} bigger than max of {hi}", f"{name}", name)
        return value

    def text(self, nid: str, name: str, limit: int = 4000) -> str:
        value = self.raw(nid, name)
        if not isinstance(value, str):
            raise self.err(nid, "invalid_input_type", "Input is not a string", name, name)
        if len(value) > limit:
            raise self.err(nid, "value_bigger_than_max", f"Text longer than {limit} characters", name, name)
        return value

    def choice(self, nid: str, name: str, options: tuple[str, ...]) -> str:
        value = self.raw(nid, name)
        if value not in options:
            raise self.err(
                nid,
                "value_not_in_list",
                "Value not in list",
                f"{name}: '{str(value)[:64]}' not in {list(options)}",
                name,
            )
        return value

    def visit(self, nid: str) -> None:
        if nid not in self.order:
            self.order.append(nid)


def file_stem(value: str) -> str:
    """A ComfyUI file name (``sd15/foo.safetensors``, ``foo``) -> the registry's name (``foo``)."""
    name = value.strip().replace("\\", "/").rsplit("/", 1)[-1]
    return re.sub(r"\.(safetensors|ckpt|pt|pth|bin)$", "", name)


def upload_of(r: Reader, nid: str) -> str:
    """The upload a LoadImage/LoadImageMask names: what ``POST /upload/image`` answered (``upl_<hex>.png``)."""
    value = r.text(nid, "image", 512)
    m = UPLOAD_IN_NAME.search(value)
    if m is None or not UPLOAD_ID_PATTERN.match(m.group(0)):
        raise r.err(
            nid,
            "value_not_in_list",
            "Value not in list",
            f"image: '{value[:64]}' is not an uploaded image; upload it with POST /upload/image and use the "
            "name it answers",
            "image",
        )
    return m.group(0)


# -- the walk -------------------------------------------------------------------------------------------------------
def read(graph: Any) -> Plan:
    """The one job ``graph`` (ComfyUI's API format) means; :class:`GraphError` / :class:`NodeError` when it cannot
    be served exactly."""
    r = Reader(graph)
    outputs = [nid for nid in r.g if r.ctype(nid) in OUTPUT_NODES]
    if not outputs:
        raise GraphError("prompt_no_outputs", "Prompt has no outputs", "")
    # 1. outputs <- VAEDecode <- one sampler
    sampler, decoders = _sampler_of(r, outputs)
    # 2. the sampler's settings
    names: dict[str, tuple[str, str]] = {}
    steps, cfg, seed, denoise = _sampling(r, sampler, names)
    # 3. the model: LoraLoader* <- CheckpointLoaderSimple
    ckpt, model_loras = _model_chain(r, sampler, "model", 0)
    model = file_stem(r.text(ckpt, "ckpt_name", 256))
    names["model"] = (ckpt, "ckpt_name")
    r.visit(ckpt)
    loras = _loras(r, model_loras, names)
    # 4. the conditioning: CLIPTextEncode, through at most one ControlNet
    texts, control_apply = _conditioning(r, sampler)
    for enc in texts.values():
        c, clip_loras = _model_chain(r, enc, "clip", 1)
        if c != ckpt and file_stem(r.text(c, "ckpt_name", 256)) != model:
            raise r.err(enc, "not_supported", "Input not supported", "clip: the sampler's checkpoint", "clip")
        if [_lora_key(r, x) for x in clip_loras] != [_lora_key(r, x) for x in model_loras]:
            raise r.err(
                enc,
                "not_supported",
                "Input not supported",
                "clip: through the same LoRAs as the model (a LoRA here applies to the U-Net and the text encoder "
                "alike)",
                "clip",
            )
        r.visit(enc)
    names.update(prompt=(texts["positive"], "text"), negative_prompt=(texts["negative"], "text"))
    fields: dict[str, Any] = {
        "model": model,
        "prompt": r.text(texts["positive"], "text"),
        "negative_prompt": r.text(texts["negative"], "text"),
        "num_inference_steps": steps,
        "guidance_scale": cfg,
        "seed": seed % SEED_MODULUS,
        "loras": loras,
    }
    sampling = (r.text(sampler, "sampler_name", 64), r.text(sampler, "scheduler", 64))
    plan = Plan("txt2img", fields, sampling, sampler, names=names)
    # 5. the latent: EmptyLatentImage | VAEEncode | VAEEncodeForInpaint | SetLatentNoiseMask
    _latent(r, plan, sampler, denoise, ckpt, model)
    # 6. the ControlNet: ControlNetLoader + an image (LoadImage, or Canny of one)
    if control_apply is not None:
        _controlnet(r, plan, control_apply, ckpt, model)
    # 7. decode and the outputs
    r.visit(sampler)
    for dec in decoders:
        _vae(r, dec, ckpt, model)
        r.visit(dec)
    for out in outputs:
        src, _ = r.link(out, "images", {"VAEDecode": 0, "Canny": 0})
        shows = "image"
        if r.ctype(src) == "Canny":
            if src not in r.order:
                raise r.err(out, "not_supported", "Input not supported",
                            "images: a Canny map is shown only when it feeds the ControlNet", "images")  # fmt: skip
            shows = "control"  # the job's detected map (its control_image output)
        if r.ctype(out) == "SaveImage":
            prefix = r.text(out, "filename_prefix", 256) if "filename_prefix" in r.g[out]["inputs"] else "ComfyUI"
            plan.outputs[out] = ["SaveImage", safe_prefix(prefix), "output", shows]
        else:
            plan.outputs[out] = ["PreviewImage", "ComfyUI_temp", "temp", shows]
        r.visit(out)
    plan.order = r.order
    plan.graph = {nid: r.g[nid] for nid in r.order}  # what runs: the nodes that feed an output
    return plan


def _sampler_of(r: Reader, outputs: list[str]) -> tuple[str, list[str]]:
    decoders: list[str] = []
    sampler = None
    for out in outputs:
        dec, _ = r.link(out, "images", {"VAEDecode": 0, "Canny": 0})
        if r.ctype(dec) == "Canny":
            continue  # the ControlNet's detected map, shown: checked with the ControlNet (step 6)
        s, _ = r.link(dec, "samples", dict.fromkeys(SAMPLERS, 0))
        if sampler is not None and s != sampler:
            raise r.err(
                s,
                "not_supported",
                "Second sampler not supported",
                f"one sampler per prompt (this graph also samples in #{sampler})",
                "samples",
            )
        sampler = s
        if dec not in decoders:
            decoders.append(dec)
    if sampler is None:
        raise r.err(outputs[0], "not_supported", "Input not supported",
                    "images: a graph without a sampler (a Canny map alone) is not served", "images")  # fmt: skip
    return sampler, decoders


def _sampling(r: Reader, sampler: str, names: dict) -> tuple[int, float, int, float]:
    """(steps, cfg, seed, denoise) of a KSampler, or of a KSamplerAdvanced that runs the whole schedule."""
    steps = int(r.number(sampler, "steps", 1, 1000, integer=True))
    cfg = float(r.number(sampler, "cfg", 0.0, 50.0))
    names.update(num_inference_steps=(sampler, "steps"), guidance_scale=(sampler, "cfg"),
                 scheduler=(sampler, "sampler_name"), timeout_s=(sampler, "steps"))  # fmt: skip
    if r.ctype(sampler) == "KSampler":
        names.update(seed=(sampler, "seed"), strength=(sampler, "denoise"))
        seed = int(r.number(sampler, "seed", 0, 0xFFFFFFFFFFFFFFFF, integer=True))
        return steps, cfg, seed, float(r.number(sampler, "denoise", 0.0, 1.0))
    names.update(seed=(sampler, "noise_seed"))
    seed = int(r.number(sampler, "noise_seed", 0, 0xFFFFFFFFFFFFFFFF, integer=True))
    window = "a step window is not served; use KSampler's denoise"
    if r.raw(sampler, "add_noise") != "enable":
        raise r.err(sampler, "not_supported", "Value not supported", "add_noise: only 'enable'", "add_noise")
    if r.number(sampler, "start_at_step", 0, 10000, integer=True) != 0:
        raise r.err(sampler, "not_supported", "Value not supported", f"start_at_step: only 0 ({window})",
                    "start_at_step")  # fmt: skip
    if r.number(sampler, "end_at_step", 0, 10000, integer=True) < steps:
        raise r.err(sampler, "not_supported", "Value not supported", f"end_at_step: at least steps ({window})",
                    "end_at_step")  # fmt: skip
    if r.raw(sampler, "return_with_leftover_noise") != "disable":
        raise r.err(sampler, "not_supported", "Value not supported", "return_with_leftover_noise: only 'disable'",
                    "return_with_leftover_noise")  # fmt: skip
    return steps, cfg, seed, 1.0


def _loras(r: Reader, model_loras: list[str], names: dict) -> list[dict]:
    loras = []
    for lo in reversed(model_loras):  # nearest the checkpoint first, as they are applied
        r.visit(lo)
        sm = float(r.number(lo, "strength_model", -4.0, 4.0))
        sc = float(r.number(lo, "strength_clip", -4.0, 4.0))
        if sm != sc:
            raise r.err(lo, "not_supported", "Value not supported",
                        "strength_clip: must equal strength_model (a LoRA here has one scale for both)",
                        "strength_clip")  # fmt: skip
        loras.append({"name": file_stem(r.text(lo, "lora_name", 256)), "scale": sm})
        names.setdefault("loras", (lo, "lora_name"))
    return loras


def _conditioning(r: Reader, sampler: str) -> tuple[dict[str, str], str | None]:
    """({positive, negative} -> CLIPTextEncode node, the one ControlNet apply node or None)."""
    control_apply = None
    texts: dict[str, str] = {}
    for which, slot in (("positive", 0), ("negative", 1)):
        allowed = {"CLIPTextEncode": 0, "ControlNetApply": 0, "ControlNetApplyAdvanced": slot}
        src, _ = r.link(sampler, which, allowed)
        if r.ctype(src) != "CLIPTextEncode":
            if r.ctype(src) == "ControlNetApply" and which == "negative":
                raise r.err(src, "not_supported", "Input not supported",
                            "ControlNetApply on the negative conditioning is not served", "conditioning")  # fmt: skip
            if control_apply is not None and control_apply != src:
                raise r.err(src, "not_supported", "Second ControlNet not supported",
                            f"one ControlNet per prompt (#{control_apply} applies one)", "control_net")  # fmt: skip
            control_apply = src
            inner = "conditioning" if r.ctype(src) == "ControlNetApply" else which
            src, _ = r.link(src, inner, {"CLIPTextEncode": 0})
        texts[which] = src
    advanced = control_apply is not None and r.ctype(control_apply) == "ControlNetApplyAdvanced"
    if advanced and (
        r.link(sampler, "positive", {"ControlNetApplyAdvanced": 0})[0] != control_apply
        or r.link(sampler, "negative", {"ControlNetApplyAdvanced": 1})[0] != control_apply
    ):
        raise r.err(sampler, "not_supported", "Input not supported",
                    f"positive and negative: both through Apply ControlNet #{control_apply}", "negative")  # fmt: skip
    return texts, control_apply


def _latent(r: Reader, plan: Plan, sampler: str, denoise: float, ckpt: str, model: str) -> None:
    allowed = {"EmptyLatentImage": 0, "VAEEncode": 0, "VAEEncodeForInpaint": 0, "SetLatentNoiseMask": 0}
    lat, _ = r.link(sampler, "latent_image", allowed)
    lt = r.ctype(lat)
    fields, names = plan.fields, plan.names
    if lt == "EmptyLatentImage":
        fields["width"] = int(r.number(lat, "width", 16, 2048, integer=True))
        fields["height"] = int(r.number(lat, "height", 16, 2048, integer=True))
        fields["num_images"] = int(r.number(lat, "batch_size", 1, 8, integer=True))
        names.update(width=(lat, "width"), height=(lat, "height"), num_images=(lat, "batch_size"))
        if denoise != 1.0:
            raise r.err(sampler, "not_supported", "Value not supported",
                        "denoise: 1.0 on an empty latent (partial denoising needs an input image: VAEEncode)",
                        "denoise")  # fmt: skip
        r.visit(lat)
        return
    plan.task = "img2img"
    enc = lat
    if lt == "SetLatentNoiseMask":
        plan.mask = _mask(r, lat, None)
        enc, _ = r.link(lat, "samples", {"VAEEncode": 0})
        plan.task = "inpaint"
    pix, _ = r.link(enc, "pixels", {"LoadImage": 0})
    _vae(r, enc, ckpt, model)
    plan.image = ImageUse(pix, upload_of(r, pix), "image")
    r.visit(pix)
    if lt == "VAEEncodeForInpaint":
        plan.mask = _mask(r, enc, int(r.number(enc, "grow_mask_by", 0, 64, integer=True)))
        plan.task = "inpaint"
    if plan.mask is not None:
        r.visit(plan.mask.node_id)
        names["mask_image"] = (plan.mask.node_id, "image")
    fields["strength"] = denoise
    names.update(image=(pix, "image"), width=(pix, "image"), height=(pix, "image"))
    r.visit(enc)
    r.visit(lat)


def _controlnet(r: Reader, plan: Plan, apply: str, ckpt: str, model: str) -> None:
    fields, names = plan.fields, plan.names
    if plan.task != "txt2img":
        raise r.err(apply, "not_supported", "Input not supported",
                    "a ControlNet with an input image (VAEEncode) is not served; use an Empty Latent Image",
                    "image")  # fmt: skip
    plan.task = "controlnet"
    loader, _ = r.link(apply, "control_net", {"ControlNetLoader": 0})
    fields["controlnet"] = file_stem(r.text(loader, "control_net_name", 256))
    fields["controlnet_conditioning_scale"] = float(r.number(apply, "strength", 0.0, 5.0))
    names.update(controlnet=(loader, "control_net_name"), controlnet_conditioning_scale=(apply, "strength"))
    if r.ctype(apply) == "ControlNetApplyAdvanced":
        part = "a ControlNet for part of the steps is not served"
        if r.number(apply, "start_percent", 0.0, 1.0) != 0.0:
            raise r.err(apply, "not_supported", "Value not supported", f"start_percent: only 0.0 ({part})",
                        "start_percent")  # fmt: skip
        if r.number(apply, "end_percent", 0.0, 1.0) != 1.0:
            raise r.err(apply, "not_supported", "Value not supported", f"end_percent: only 1.0 ({part})",
                        "end_percent")  # fmt: skip
        if "vae" in r.g[apply]["inputs"]:
            _vae(r, apply, ckpt, model)
    img, _ = r.link(apply, "image", {"LoadImage": 0, "Canny": 0})
    fields["preprocess"] = "none"
    canny = None
    if r.ctype(img) == "Canny":
        canny = img
        fields["preprocess"] = "canny"
        # ComfyUI's thresholds are on [0, 1] pixels; ours (OpenCV's) on [0, 255]
        fields["canny_low_threshold"] = round(float(r.number(canny, "low_threshold", 0.01, 0.99)) * 255)
        fields["canny_high_threshold"] = round(float(r.number(canny, "high_threshold", 0.01, 0.99)) * 255)
        names.update(canny_low_threshold=(canny, "low_threshold"), canny_high_threshold=(canny, "high_threshold"))
        img, _ = r.link(canny, "image", {"LoadImage": 0})
    plan.control = ImageUse(img, upload_of(r, img), "image")
    names.update(control_image=(img, "image"), preprocess=(img, "image"))
    for nid in (img, canny, loader, apply):
        if nid is not None:
            r.visit(nid)


def safe_prefix(prefix: str) -> str:
    """SaveImage's ``filename_prefix`` as a file name stem: its last path part, ``[A-Za-z0-9_-]`` only."""
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", prefix.replace("\\", "/").rsplit("/", 1)[-1])[:MAX_PREFIX]
    return stem or "ComfyUI"


def _lora_key(r: Reader, nid: str) -> tuple:
    inputs = r.g[nid]["inputs"]
    return nid, inputs.get("lora_name")


def _model_chain(r: Reader, nid: str, name: str, slot: int) -> tuple[str, list[str]]:
    """(the checkpoint node, the LoraLoader nodes from ``nid`` down to it) along the MODEL (slot 0) or CLIP (1) path."""
    loras: list[str] = []
    src, _ = r.link(nid, name, {"CheckpointLoaderSimple": slot, "LoraLoader": slot})
    while r.ctype(src) == "LoraLoader":
        if src in loras or len(loras) >= 8:
            raise r.err(src, "not_supported", "Value not supported", "at most 8 LoRAs, without cycles", name)
        loras.append(src)
        src, _ = r.link(src, name, {"CheckpointLoaderSimple": slot, "LoraLoader": slot})
    return src, loras


def _vae(r: Reader, nid: str, ckpt: str, model: str) -> None:
    src, _ = r.link(nid, "vae", {"CheckpointLoaderSimple": 2})
    if src != ckpt and file_stem(r.text(src, "ckpt_name", 256)) != model:
        raise r.err(nid, "not_supported", "Input not supported", "vae: the sampler's checkpoint's VAE", "vae")


def _mask(r: Reader, nid: str, grow: int | None) -> ImageUse:
    src, slot = r.link(nid, "mask", {"LoadImage": 1, "LoadImageMask": 0})
    if r.ctype(src) == "LoadImage":
        return ImageUse(src, upload_of(r, src), "alpha_mask", "alpha", grow)
    channel = r.choice(src, "channel", ("alpha", "red", "green", "blue"))
    return ImageUse(src, upload_of(r, src), "channel_mask", channel, grow)
