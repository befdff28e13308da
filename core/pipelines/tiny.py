"""Tiny, randomly initialised diffusers pipelines of every kind, built offline under a fixed seed.

    python -m core.pipelines.tiny DIR          (or: make tiny-models DIR=...)

writes ``DIR/tiny-sd`` (StableDiffusionPipeline: txt2img, img2img, inpaint, controlnet), ``DIR/tiny-sd-inpaint``
(a true 9-channel inpainting UNet), ``DIR/tiny-sdxl`` (StableDiffusionXLPipeline), ``DIR/tiny-controlnet``
(ControlNetModel for tiny-sd), ``DIR/tiny-wan`` (WanPipeline, text-to-video), ``DIR/tiny-flux`` (FluxPipeline) and
``DIR/tiny-sd3`` (StableDiffusion3Pipeline) and ``DIR/tiny-depth`` (a Depth Anything model: ControlNet's depth
preprocessor), each loadable with
``from_pretrained``. Tokenizers are built from small vocabularies (no hub): CLIP's byte-level BPE from a
``vocab.json``/``merges.txt``, and a T5 tokenizer from a ``tokenizers`` Unigram model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

WORDS = [
    "a",
    "an",
    "the",
    "of",
    "photo",
    "cat",
    "dog",
    "red",
    "blue",
    "green",
    "house",
    "tree",
    "sky",
    "monkey",
    "dance",
    "digit",
    "seven",
    "style",
    "portrait",
    "landscape",
    "painting",
    "bright",
    "dark",
]
KINDS = (
    "tiny-sd",
    "tiny-sd-inpaint",
    "tiny-sdxl",
    "tiny-controlnet",
    "tiny-wan",
    "tiny-flux",
    "tiny-sd3",
    "tiny-cogvideox",
    "tiny-depth",
)


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2 / CLIP byte-level BPE alphabet
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_tokenizer(path: Path):
    """A CLIP tokenizer from a byte-level vocabulary (every byte, alone and word-final) and a few word merges."""
    from transformers import CLIPTokenizer

    path.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges = []
    for w in WORDS:  # merge each word left to right so common words are single tokens
        parts = list(w[:-1]) + [w[-1] + "</w>"]
        while len(parts) > 1:
            a, b = parts[0], parts[1]
            merges.append(f"{a} {b}")
            vocab.setdefault(a + b, len(vocab))
            parts = [a + b] + parts[2:]
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    tok = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=77)
    return tok


def t5_tokenizer():
    """A T5 tokenizer wrapping a tokenizers Unigram model over a small word list."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("▁" + w, -1.0 - i * 0.01) for i, w in enumerate(WORDS)]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789▁"]
    tk = Tokenizer(models.Unigram(vocab, unk_id=2))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    return T5TokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0)


def _clip_text_encoder(tok, with_projection: bool = False, hidden: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        projection_dim=hidden,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg)


def _vae():
    from diffusers import AutoencoderKL

    # four blocks: an 8x VAE like the real ones, so latents are image/8
    return AutoencoderKL(
        block_out_channels=[8, 8, 8, 8],
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
    )


def _sd_unet(in_channels: int = 4):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def build_sd(out: Path, inpaint: bool = False) -> None:
    from diffusers import PNDMScheduler, StableDiffusionInpaintPipeline, StableDiffusionPipeline

    torch.manual_seed(0)
    tok = clip_tokenizer(out / "_tok")
    torch.manual_seed(0)
    te = _clip_text_encoder(tok)
    torch.manual_seed(0)
    unet = _sd_unet(9 if inpaint else 4)
    torch.manual_seed(0)
    vae = _vae()
    sched = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    )
    cls = StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
    pipe = cls(
        vae=vae,
        text_encoder=te,
        tokenizer=tok,
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out)


def build_controlnet(out: Path) -> None:
    from diffusers import ControlNetModel

    torch.manual_seed(0)
    cn = ControlNetModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
        conditioning_embedding_out_channels=(4, 8, 16, 16),
    )
    cn.save_pretrained(out)


def build_sdxl(out: Path) -> None:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=80,
        cross_attention_dim=64,
        norm_num_groups=8,
    )
    torch.manual_seed(0)
    vae = _vae()
    tok = clip_tokenizer(out / "_tok")
    torch.manual_seed(0)
    te = _clip_text_encoder(tok)
    te2 = _clip_text_encoder(tok, with_projection=True)
    sched = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok, unet=unet, scheduler=sched
    )
    pipe.save_pretrained(out)


def build_wan(out: Path) -> None:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    tok = t5_tokenizer()
    torch.manual_seed(0)
    te = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tok),
            d_model=32,
            d_ff=37,
            d_kv=8,
            num_heads=4,
            num_layers=2,
            relative_attention_num_buckets=8,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            decoder_start_token_id=tok.pad_token_id,
        )
    )
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    sched = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0
    )
    pipe = WanPipeline(tokenizer=tok, text_encoder=te, vae=vae, transformer=transformer, scheduler=sched)
    pipe.save_pretrained(out)


def _t5_encoder(tok):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=len(tok),
            d_model=32,
            d_ff=37,
            d_kv=8,
            num_heads=4,
            num_layers=2,
            relative_attention_num_buckets=8,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            decoder_start_token_id=tok.pad_token_id,
        )
    )


def _flat_vae(latent_channels: int):
    from diffusers import AutoencoderKL

    # SD3/Flux-style VAE (no quant convs, shift factor); 2 blocks: a 2x VAE, enough for tests
    return AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
    )


def build_flux(out: Path) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tok = clip_tokenizer(out / "_tok")
    t5tok = t5_tokenizer()
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    )
    torch.manual_seed(0)
    te = _clip_text_encoder(tok)
    torch.manual_seed(0)
    te2 = _t5_encoder(t5tok)
    torch.manual_seed(0)
    vae = _flat_vae(4)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=te,
        tokenizer=tok,
        text_encoder_2=te2,
        tokenizer_2=t5tok,
        transformer=transformer,
    )
    pipe.save_pretrained(out)


def build_sd3(out: Path) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tok = clip_tokenizer(out / "_tok")
    t5tok = t5_tokenizer()
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=1,
        in_channels=16,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=16,
    )
    torch.manual_seed(0)
    te = _clip_text_encoder(tok, with_projection=True)
    torch.manual_seed(0)
    te2 = _clip_text_encoder(tok, with_projection=True)
    torch.manual_seed(0)
    te3 = _t5_encoder(t5tok)
    torch.manual_seed(0)
    vae = _flat_vae(16)  # 16 latent channels, as SD3's inpainting expects
    pipe = StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=te,
        tokenizer=tok,
        text_encoder_2=te2,
        tokenizer_2=tok,
        text_encoder_3=te3,
        tokenizer_3=t5tok,
        transformer=transformer,
    )
    pipe.save_pretrained(out)


# small defaults so every endpoint answers in seconds on a CPU (read by the registry from diffuserve.json)
def build_cogvideox(out: Path) -> None:
    """CogVideoX: a 3D VAE compressing time 4x, a transformer over text and video tokens, T5 text features."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    tok = t5_tokenizer()
    te = _t5_encoder(tok)
    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        time_embed_dim=2,
        text_embed_dim=te.config.d_model,
        num_layers=1,
        sample_width=2,
        sample_height=2,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=226,
    )
    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    )
    pipe = CogVideoXPipeline(
        tokenizer=tok, text_encoder=te, vae=vae, transformer=transformer, scheduler=CogVideoXDDIMScheduler()
    )
    pipe.save_pretrained(out)


DEFAULTS = {
    "tiny-cogvideox": {"width": 16, "height": 16, "num_frames": 9, "num_inference_steps": 2, "guidance_scale": 6.0},
    "tiny-sd": {"num_inference_steps": 2, "guidance_scale": 5.0},
    "tiny-sd-inpaint": {"num_inference_steps": 2, "guidance_scale": 5.0},
    "tiny-sdxl": {"num_inference_steps": 2, "guidance_scale": 5.0},
    "tiny-wan": {"width": 32, "height": 32, "num_frames": 5, "num_inference_steps": 2, "guidance_scale": 5.0},
    "tiny-flux": {"width": 32, "height": 32, "num_inference_steps": 2, "guidance_scale": 3.5},
    "tiny-sd3": {"width": 32, "height": 32, "num_inference_steps": 2, "guidance_scale": 5.0},
}


def build_depth(out: Path) -> None:
    """A Depth Anything model (a 4-layer DINOv2 backbone, 16 wide) with its image processor: the depth
    preprocessor of ControlNet requests, found in MODELS_DIR by its ``ForDepthEstimation`` architecture."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    backbone = Dinov2Config(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        out_features=["stage1", "stage2", "stage3", "stage4"],
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=16,
        patch_size=8,
        neck_hidden_sizes=[8, 8, 8, 8],
        fusion_hidden_size=8,
        head_hidden_size=8,
    )
    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(config).save_pretrained(out)
    DPTImageProcessor(
        do_resize=True, size={"height": 32, "width": 32}, keep_aspect_ratio=False, ensure_multiple_of=8
    ).save_pretrained(out)


BUILDERS = {
    "tiny-sd": build_sd,
    "tiny-sd-inpaint": lambda out: build_sd(out, inpaint=True),
    "tiny-sdxl": build_sdxl,
    "tiny-controlnet": build_controlnet,
    "tiny-wan": build_wan,
    "tiny-flux": build_flux,
    "tiny-sd3": build_sd3,
    "tiny-cogvideox": build_cogvideox,
    "tiny-depth": build_depth,
}


def build_tiny_models(root: str | Path, kinds: tuple[str, ...] = KINDS) -> list[Path]:
    import shutil

    root = Path(root)
    made = []
    for kind in kinds:
        out = root / kind
        if out.exists():
            shutil.rmtree(out)
        BUILDERS[kind](out)
        shutil.rmtree(out / "_tok", ignore_errors=True)
        if kind in DEFAULTS:
            (out / "diffuserve.json").write_text(json.dumps(DEFAULTS[kind], indent=2) + "\n")
        made.append(out)
    return made


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__)
        raise SystemExit(2)
    for p in build_tiny_models(sys.argv[1], tuple(sys.argv[2:]) or KINDS):
        print(p)
