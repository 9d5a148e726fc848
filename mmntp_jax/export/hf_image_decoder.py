"""The image tokenizer's decoder in torch: one block of codes → pixels, as mmntp_jax's tokenizer decodes them.

This file is copied into every `mmntp export hf` folder as `mmntp_image_decoder.py`
and imports nothing from mmntp_jax or jax (numpy, torch, safetensors and the
standard library only). Dimensions: B batch, N codes of one image, h×w the
latent grid (N = h·w), D code channels, H×W×3 the image.

It reads `tokenizers/image/tokenizer.json` (architecture and quantizer) and
`tokenizer.safetensors` (the weights `mmntp_jax.tokenizers.io` saves; only the
decoder side is used) and computes what `ImageTokenizer.decode` does:

    codes [B, N] → code vectors [B, h, w, D]     fsq grid point, vq codebook row, lfq/bsq ±bits
    → post_quant_conv (1×1) → conv_in → mid block (resnets, optional attention)
    → up blocks (resnets, nearest ×2 then conv) → GroupNorm, SiLU, conv_out
    → depth-to-space (patch) → (x + 1) / 2 clipped to [0, 1]  → float32 [B, H, W, 3]

Other tokenizers (audio, video, continuous; residual, grouped or multi-scale
quantizers) are refused at load time with one line saying that decoding is not
bundled for them.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DECODABLE = {"image": ("fsq", "vq", "lfq", "bsq")}  # tokenizer kind → quantizer kinds decoded here
TOKENIZER_CONFIG, TOKENIZER_WEIGHTS = "tokenizer.json", "tokenizer.safetensors"
PARTS = ("decoder.", "post_quant_conv.", "quantize.embedding")  # the tensors decoding reads


def not_bundled_reason(meta: dict) -> str | None:
    """Why a tokenizer (its tokenizer.json) cannot be decoded here; None when it can."""
    kind, quantizer = meta.get("kind"), (meta.get("config") or {}).get("quantizer", {}).get("kind")
    if quantizer not in DECODABLE.get(kind, ()):
        return (f"decoding is not bundled for this tokenizer (kind {kind}, quantizer {quantizer}; bundled: image tokenizers with "
                f"{', '.join(DECODABLE['image'])} quantizers): decode its codes with mmntp_jax.tokenizers.io.load_tokenizer")
    return None


class Conv(nn.Module):
    """A k×k convolution, stride 1, padded to keep the size (mmntp_jax's `Conv` wrapper)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=(kernel - 1) // 2)

    def forward(self, x):
        return self.conv(x)


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, groups), channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin, groups), Conv(cin, cout)
        self.norm2, self.conv2 = group_norm(cout, groups), Conv(cout, cout)
        self.conv_shortcut = Conv(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))
        return (self.conv_shortcut(x) if self.conv_shortcut is not None else x) + h


class Attention(nn.Module):
    """Single-head self-attention over the positions of one image."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = group_norm(channels, groups)
        self.to_q, self.to_k, self.to_v, self.to_out = (nn.Linear(channels, channels) for _ in range(4))

    def forward(self, x):
        b, c, h, w = x.shape
        t = self.group_norm(x).flatten(2).transpose(1, 2)
        weights = torch.softmax(self.to_q(t) @ self.to_k(t).transpose(1, 2) / math.sqrt(c), dim=-1)
        return x + self.to_out(weights @ self.to_v(t)).transpose(1, 2).reshape(b, c, h, w)


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups) for _ in range(2)])
        self.attentions = nn.ModuleList([Attention(channels, groups)] if attention else [])

    def forward(self, x):
        x = self.resnets[0](x)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv(channels, channels)

    def forward(self, x):
        return self.conv(x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1))


class UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int, n_res: int, groups: int, up: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(cin if i == 0 else cout, cout, groups) for i in range(n_res)])
        self.upsamplers = nn.ModuleList([Upsample(cout)] if up else [])

    def forward(self, x):
        for block in [*self.resnets, *self.upsamplers]:
            x = block(x)
        return x


class Decoder(nn.Module):
    """z [B, z_channels, h, w] → [B, out·patch², h·f/patch, w·f/patch]: the mirror of the encoder."""

    def __init__(self, c: dict):
        super().__init__()
        widths = [c["channels"] * m for m in c["channel_mult"]]
        groups = c["norm_groups"]
        self.conv_in = Conv(c["z_channels"], widths[-1])
        self.mid_block = MidBlock(widths[-1], groups, c["attention"])
        blocks, cin = [], widths[-1]
        for j, cout in enumerate(reversed(widths)):
            blocks.append(UpBlock(cin, cout, c["num_res_blocks"] + 1, groups, up=j < len(widths) - 1))
            cin = cout
        self.up_blocks = nn.ModuleList(blocks)
        self.conv_norm_out = group_norm(cin, groups)
        self.conv_out = Conv(cin, c["in_channels"] * c["patch"] ** 2)

    def forward(self, z):
        h = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            h = block(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


def code_dim(quantizer: dict) -> int:
    """D: the channels of one code vector (what post_quant_conv takes)."""
    if quantizer["kind"] == "fsq":
        return len(quantizer["levels"])
    if quantizer["kind"] in ("lfq", "bsq"):
        return int(math.log2(quantizer["codebook_size"]))
    return int(quantizer["dim"])


def code_vectors(codes: torch.Tensor, quantizer: dict, codebook: torch.Tensor | None) -> torch.Tensor:
    """int codes [...] → float32 code vectors [..., D], as the tokenizer's bottleneck looks them up."""
    kind = quantizer["kind"]
    if kind == "vq":
        return codebook[codes]
    if kind == "fsq":
        levels = torch.tensor(quantizer["levels"], dtype=torch.long, device=codes.device)
        basis = torch.cumprod(torch.cat([torch.ones_like(levels[:1]), levels[:-1]]), 0)
        half = (levels // 2).float()
        return (((codes[..., None] // basis) % levels).float() - half) / half
    bits = code_dim(quantizer)
    on = (codes[..., None] >> torch.arange(bits - 1, -1, -1, device=codes.device)) & 1
    scale = 1.0 / math.sqrt(bits) if kind == "bsq" else 1.0
    return torch.where(on > 0, scale, -scale).float()


class ImageDecoder(nn.Module):
    """Local codes [B, N] (or [N]) → float32 images [B, H, W, 3] in [0, 1] (numpy)."""

    def __init__(self, meta: dict):
        super().__init__()
        self.config, self.quantizer = meta["config"], meta["config"]["quantizer"]
        self.vocab_size, self.tokens = int(meta["vocab_size"]), int(meta["tokens_per_item"])
        self.latent = self.config["image_size"] // self.config["factor"]
        dim = code_dim(self.quantizer)
        self.post_quant_conv = nn.Conv2d(dim, self.config["z_channels"], 1)
        self.decoder = Decoder(self.config)
        if self.quantizer["kind"] == "vq":
            self.quantize = nn.Module()
            self.quantize.embedding = nn.Parameter(torch.zeros(self.quantizer["codebook_size"], dim))

    @torch.no_grad()
    def forward(self, codes) -> np.ndarray:
        weight = self.post_quant_conv.weight
        codes = torch.as_tensor(np.asarray(codes.cpu() if torch.is_tensor(codes) else codes), dtype=torch.long, device=weight.device)
        codes = codes[None] if codes.ndim == 1 else codes
        if codes.ndim != 2 or codes.shape[1] != self.tokens:
            raise ValueError(f"image decoder: expected codes [B, {self.tokens}] for a {self.latent}×{self.latent} grid, got shape {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.vocab_size):
            raise ValueError(f"image decoder: codes must lie in [0, {self.vocab_size}); got [{int(codes.min())}, {int(codes.max())}]")
        codebook = self.quantize.embedding if self.quantizer["kind"] == "vq" else None
        z = code_vectors(codes.reshape(-1, self.latent, self.latent), self.quantizer, codebook).permute(0, 3, 1, 2)
        x = self.decoder(self.post_quant_conv(z.to(weight.dtype))).permute(0, 2, 3, 1)
        b, h, w, c = x.shape
        p = self.config["patch"]
        x = x.reshape(b, h, w, p, p, c // (p * p)).permute(0, 1, 3, 2, 4, 5).reshape(b, h * p, w * p, c // (p * p))
        return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0).cpu().numpy()


def torch_tensor(name: str, array: np.ndarray) -> tuple[str, torch.Tensor]:
    """One saved Flax tensor → (torch parameter name, tensor in torch layout)."""
    x = torch.from_numpy(np.ascontiguousarray(array))
    if name.endswith(".kernel"):
        name, x = name[: -len("kernel")] + "weight", (x.permute(3, 2, 0, 1) if x.ndim == 4 else x.T)
    elif name.endswith(".scale"):
        name = name[: -len("scale")] + "weight"
    return name, x.contiguous()


def load_image_decoder(folder, modality: str = "image") -> ImageDecoder:
    """The decoder of `folder/tokenizers/<modality>/` (an export folder), weights loaded."""
    from safetensors.numpy import load_file

    if modality != "image":
        raise ValueError(f"decoding {modality} codes is not bundled (only image decoders are): decode them with mmntp_jax.tokenizers.io.load_tokenizer")
    tokenizer = Path(folder) / "tokenizers" / modality
    if not (tokenizer / TOKENIZER_CONFIG).is_file() or not (tokenizer / TOKENIZER_WEIGHTS).is_file():
        raise FileNotFoundError(f"{folder} carries no {modality} tokenizer ({tokenizer}/{TOKENIZER_CONFIG} and {TOKENIZER_WEIGHTS} are needed)")
    meta = json.loads((tokenizer / TOKENIZER_CONFIG).read_text())
    reason = not_bundled_reason(meta)
    if reason:
        raise ValueError(f"{tokenizer}: {reason}")
    decoder = ImageDecoder(meta)
    saved = load_file(str(tokenizer / TOKENIZER_WEIGHTS))
    state = dict(torch_tensor(k, v) for k, v in saved.items() if k.startswith(PARTS))
    expected = decoder.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k, v in state.items() if k in expected and expected[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise ValueError(f"{tokenizer / TOKENIZER_WEIGHTS}: tensors do not fit {TOKENIZER_CONFIG} (missing {missing[:3]}, unexpected {unexpected[:3]}, shapes differ {wrong[:3]})")
    decoder.load_state_dict(state)
    return decoder.eval()


def write_png(path, image) -> Path:
    """Writes float [H, W, 3] (or [H, W]) in [0, 1] as an 8-bit PNG; returns the path."""
    pixels = np.round(np.clip(np.asarray(image, np.float32), 0.0, 1.0) * 255).astype(np.uint8)
    pixels = np.repeat(pixels[..., None], 3, axis=-1) if pixels.ndim == 2 else pixels[..., :3]
    h, w = pixels.shape[:2]
    rows = b"".join(b"\x00" + pixels[y].tobytes() for y in range(h))
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    Path(path).write_bytes(png)
    return Path(path)
