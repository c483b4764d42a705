"""Tiny, randomly initialized diffusers pipelines built in-process (no hub, no files).

Tests, the demo and benchmarks need real pipelines of every supported kind that run on a CPU
in well under a second per call. Every component (denoiser, VAE, scheduler, text encoder and
tokenizer) is built from a small config with a fixed torch seed, so two calls with the same
``seed`` give identical weights.

The tokenizer is a byte-level BPE without merges, built with the ``tokenizers`` library: every
string maps to a distinct token sequence (one token per UTF-8 byte), so two different prompts
never collapse onto the same ``[UNK]`` ids the way a small word-level vocabulary would.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from memlens.diffusion._imports import require_diffusers

Kind = Literal["sd", "t2v", "animatediff", "cogvideox", "wan"]
KINDS: tuple[Kind, ...] = ("sd", "t2v", "animatediff", "cogvideox", "wan")

_TEXT_DIM = 32
_MAX_LEN = 64  # token budget of the tiny text encoders: one token per byte, so ~60 characters


def _byte_tokenizer(specials: dict[str, str], *, max_length: int) -> Any:
    """A ``PreTrainedTokenizerFast`` over the 256 byte-level symbols plus ``specials``.

    ``specials`` maps a role (``bos_token``, ``eos_token``, ``pad_token``, ``unk_token``) to
    its text; the roles present decide which special tokens wrap an encoded prompt.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    names = list(dict.fromkeys(specials.values()))
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(names + sorted(alphabet))}
    unk = specials.get("unk_token")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    bos, eos = specials.get("bos_token"), specials.get("eos_token")
    single = " ".join(t for t in (bos and f"{bos}:0", "$A:0", eos and f"{eos}:0") if t)
    tok.post_processor = processors.TemplateProcessing(
        single=single,
        special_tokens=[(t, vocab[t]) for t in (bos, eos) if t is not None],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, **specials)


def _clip_text(seed: int) -> tuple[Any, Any]:
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _byte_tokenizer(
        {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|pad|>"},
        max_length=_MAX_LEN,
    )
    torch.manual_seed(seed + 1)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=_TEXT_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_MAX_LEN,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config), tokenizer


def _t5_text(seed: int) -> tuple[Any, Any]:
    from transformers import T5Config, T5EncoderModel

    tokenizer = _byte_tokenizer(
        {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}, max_length=_MAX_LEN
    )
    torch.manual_seed(seed + 1)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=_TEXT_DIM,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return T5EncoderModel(config), tokenizer


def _vae_2d(seed: int) -> Any:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed + 2)
    return AutoencoderKL(
        block_out_channels=(4, 8),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=2,
        sample_size=16,
    )


def _ddim() -> Any:
    from diffusers import DDIMScheduler

    # Wen et al.'s sampler (methods.md §3.1): DDIM on SD's scaled-linear schedule.
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def _sd(seed: int) -> Any:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    text_encoder, tokenizer = _clip_text(seed)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=_TEXT_DIM,
        norm_num_groups=2,
    )
    return StableDiffusionPipeline(
        vae=_vae_2d(seed),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_ddim(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _t2v(seed: int) -> Any:
    from diffusers import TextToVideoSDPipeline, UNet3DConditionModel

    text_encoder, tokenizer = _clip_text(seed)
    torch.manual_seed(seed)
    unet = UNet3DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=_TEXT_DIM,
        attention_head_dim=4,
        norm_num_groups=2,
    )
    return TextToVideoSDPipeline(
        vae=_vae_2d(seed),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_ddim(),
    )


def _animatediff(seed: int) -> Any:
    from diffusers import AnimateDiffPipeline, MotionAdapter, UNet2DConditionModel

    text_encoder, tokenizer = _clip_text(seed)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=_TEXT_DIM,
        norm_num_groups=2,
    )
    motion_adapter = MotionAdapter(
        block_out_channels=(8, 16),
        motion_layers_per_block=1,
        motion_norm_num_groups=2,
        motion_num_attention_heads=2,
        motion_max_seq_length=8,
    )
    # The pipeline merges the 2-D UNet and the adapter into a UNetMotionModel (pipe.unet).
    return AnimateDiffPipeline(
        vae=_vae_2d(seed),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        motion_adapter=motion_adapter,
        scheduler=_ddim(),
    )


def _cogvideox(seed: int) -> Any:
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    text_encoder, tokenizer = _t5_text(seed)
    torch.manual_seed(seed)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        time_embed_dim=2,
        text_embed_dim=_TEXT_DIM,
        num_layers=1,
        sample_width=2,
        sample_height=2,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=_MAX_LEN,
    )
    torch.manual_seed(seed + 2)
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
    return CogVideoXPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=CogVideoXDDIMScheduler(),
    )


def _wan(seed: int) -> Any:
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )

    text_encoder, tokenizer = _t5_text(seed)
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=_TEXT_DIM,
        freq_dim=32,
        ffn_dim=32,
        num_layers=1,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLWan(
        base_dim=3,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
    )


_BUILDERS = {
    "sd": _sd,
    "t2v": _t2v,
    "animatediff": _animatediff,
    "cogvideox": _cogvideox,
    "wan": _wan,
}

#: Small call settings per kind (resolution, frames, prompt length) that keep one tiny pipeline
#: call in the tens of milliseconds on a CPU; pass them to the pipeline or to memlens' drivers.
TINY_CALL_KWARGS: dict[str, dict[str, Any]] = {
    "sd": {"height": 16, "width": 16},
    "t2v": {"height": 16, "width": 16, "num_frames": 4},
    "animatediff": {"height": 16, "width": 16, "num_frames": 4},
    "cogvideox": {"height": 16, "width": 16, "num_frames": 9, "max_sequence_length": _MAX_LEN},
    "wan": {"height": 16, "width": 16, "num_frames": 9, "max_sequence_length": _MAX_LEN},
}


def tiny_pipeline(kind: str, seed: int = 0) -> Any:
    """A tiny random pipeline of ``kind`` (one of :data:`KINDS`), identical for equal seeds.

    ``TINY_CALL_KWARGS[kind]`` holds the matching small call settings (height, width, frames).
    """
    require_diffusers()
    if kind not in _BUILDERS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int; got {type(seed).__name__}")
    pipe = _BUILDERS[kind](seed)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()  # freshly built modules train; T5's dropout (0.1) would be on
    pipe.set_progress_bar_config(disable=True)
    return pipe
