"""Parameter count and analytic forward cost of DiT / JiT / DDT / DiT^DH models.

MACs count the multiply-accumulates of every matmul in one forward pass of ONE image: the
patch embedding, the timestep MLP, the adaLN modulations, q/k/v/out projections, the attention
products QKᵀ and AV (T²·D each), the MLPs and the final projection. Elementwise work (norms,
activations, softmax, RoPE, bias adds) is left out, as in the DiT paper's "Gflops" (which are
MACs). FLOPs = 2 · MACs; training costs about 3 × forward FLOPs (see CONVENTIONS.md).

Parameter counts are exact and match the instantiated modules (tests/test_model_cost.py):
`params` counts trainable parameters; `params_with_pos_embed` adds the fixed sin-cos position
table (T·D), which DiT's PyTorch code stores as a frozen parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vdm_jax.nn.layers import FREQ_DIM
from vdm_jax.nn.registry import grid_size, resolve_spec


def _linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def model_cost(
    name_or_spec: str | Mapping[str, Any],
    *,
    input_size: tuple[int, int] | int,
    in_channels: int,
    num_classes: int,
    learn_sigma: bool = False,
) -> dict[str, float | int]:
    """{'params', 'params_with_pos_embed', 'macs', 'flops', 'attention_macs'} for one image of
    size input_size.

    Example: DiT-XL/2 on 32×32×4 latents, 1000 classes, learn_sigma → params 674,834,720,
    macs ≈ 118.6e9 (the paper's 118.64 "Gflops").
    """
    spec = resolve_spec(name_or_spec)
    if spec["family"] == "ddt":
        return _ddt_cost(spec, input_size, in_channels, num_classes, learn_sigma)
    if spec["family"] == "dit_dh":
        return _dit_dh_cost(spec, input_size, in_channels, num_classes, learn_sigma)
    gh, gw = grid_size(input_size, spec["patch_size"])
    n_tok = gh * gw  # T
    d, p, depth = spec["hidden_size"], spec["patch_size"], spec["depth"]
    mlp_hidden = int(d * spec["mlp_ratio"])
    c_out = 2 * in_channels if learn_sigma else in_channels
    patch_dim, out_dim = p * p * in_channels, p * p * c_out
    jit = spec["family"] == "jit"

    # --- parameters -----------------------------------------------------------------------
    n_time = 2 if spec.get("second_time", False) else 1  # MeanFlow's second time: another MLP
    params = n_time * (_linear(FREQ_DIM, d) + _linear(d, d))  # timestep MLP(s)
    params += (num_classes + 1) * d  # label table incl. the null class
    params += _linear(d, 2 * d) + _linear(d, out_dim)  # final adaLN + linear
    block = _linear(d, 3 * d) + _linear(d, d) + _linear(d, 6 * d)  # qkv, proj, adaLN
    if jit:
        head_dim = d // spec["num_heads"]
        swiglu = int(mlp_hidden * 2 / 3)
        b = spec["bottleneck_dim"]
        params += _linear(patch_dim, b, bias=False) + _linear(b, d)  # bottleneck patch embed
        params += spec["in_context_len"] * d  # in-context token positions
        params += d  # final RMSNorm scale
        block += _linear(d, 2 * swiglu) + _linear(swiglu, d)  # SwiGLU
        block += 2 * d + 2 * head_dim  # RMSNorm scales: norm1, norm2, q_norm, k_norm
    else:
        params += _linear(patch_dim, d)  # patch embed (p×p conv)
        block += _linear(d, mlp_hidden) + _linear(mlp_hidden, d)  # MLP
    params += depth * block

    # --- forward MACs (one image) ------------------------------------------------------------
    macs = n_time * (FREQ_DIM * d + d * d)  # timestep MLP(s)
    macs += 2 * d * d + n_tok * d * out_dim  # final adaLN + linear
    macs += depth * 6 * d * d  # block adaLN
    if jit:
        macs += n_tok * (patch_dim * spec["bottleneck_dim"] + spec["bottleneck_dim"] * d)
        mlp_per_token = 3 * d * swiglu
        start = spec["in_context_start"] if spec["in_context_len"] > 0 else depth
        lengths = [n_tok] * start + [n_tok + spec["in_context_len"]] * (depth - start)
    else:
        macs += n_tok * patch_dim * d
        mlp_per_token = 2 * d * mlp_hidden
        lengths = [n_tok] * depth
    attention = sum(2 * n * n * d for n in lengths)  # per block: QKᵀ and AV
    macs += sum(n * (4 * d * d + mlp_per_token) for n in lengths) + attention  # + projections, MLP

    return dict(
        params=params,
        params_with_pos_embed=params + n_tok * d,
        macs=float(macs),
        flops=2.0 * float(macs),
        attention_macs=float(attention),
    )


def _ddt_cost(
    spec: Mapping[str, Any], input_size: tuple[int, int] | int, in_channels: int,
    num_classes: int, learn_sigma: bool,
) -> dict[str, float | int]:
    """DDT (vdm_jax.nn.ddt): two patch embeddings, LightningDiT blocks (qkv and SwiGLU without
    bias, RMSNorm scales, q/k norms), no position table. The decoder blocks and the final layer
    are modulated per token, so their AdaLN Linears cost T·6D² and T·2D² MACs, not 6D² and 2D²."""
    gh, gw = grid_size(input_size, spec["patch_size"])
    n_tok = gh * gw  # T
    d, p = spec["hidden_size"], spec["patch_size"]
    n_enc, n_dec = spec["encoder_depth"], spec["decoder_depth"]
    head_dim = d // spec["num_heads"]
    swiglu = int(int(d * spec["mlp_ratio"]) * 2 / 3)
    c_out = 2 * in_channels if learn_sigma else in_channels
    patch_dim, out_dim = p * p * in_channels, p * p * c_out

    params = 2 * _linear(patch_dim, d)  # s_embedder, x_embedder
    params += _linear(FREQ_DIM, d) + _linear(d, d)  # timestep MLP
    params += (num_classes + 1) * d  # label table incl. the null class
    params += _linear(d, 2 * d) + _linear(d, out_dim)  # final adaLN + linear (affine-free LN)
    block = _linear(d, 3 * d, bias=False) + _linear(d, d) + _linear(d, 6 * d)  # qkv, proj, adaLN
    block += _linear(d, 2 * swiglu, bias=False) + _linear(swiglu, d, bias=False)  # SwiGLU
    block += 2 * d + 2 * head_dim  # RMSNorm scales: norm1, norm2, q_norm, k_norm
    params += (n_enc + n_dec) * block

    macs = 2 * n_tok * patch_dim * d  # two patch embeddings
    macs += FREQ_DIM * d + d * d  # timestep MLP
    macs += n_enc * 6 * d * d + n_dec * n_tok * 6 * d * d  # adaLN: per sample / per token
    macs += n_tok * 2 * d * d + n_tok * d * out_dim  # final adaLN (per token) + linear
    attention = (n_enc + n_dec) * 2 * n_tok * n_tok * d
    macs += (n_enc + n_dec) * n_tok * (4 * d * d + 3 * d * swiglu) + attention
    return dict(params=params, params_with_pos_embed=params, macs=float(macs),
                flops=2.0 * float(macs), attention_macs=float(attention))


def _dit_dh_cost(
    spec: Mapping[str, Any], input_size: tuple[int, int] | int, in_channels: int,
    num_classes: int, learn_sigma: bool,
) -> dict[str, float | int]:
    """DiT^DH (vdm_jax.nn.dit_dh): two patch embeddings, the Gaussian Fourier time MLP (with
    its fixed W, 256 numbers), a D → D_h projector when the widths differ, RAE_BLOCK blocks
    (biased qkv and SwiGLU, RMSNorm scales, no q/k norm) of width D then D_h, an RMSNorm final
    layer. The head's blocks and the final layer are modulated per token (T·6D_h², T·2D_h²
    MACs). `params_with_pos_embed` adds the backbone's sin-cos table (T·D): the count of the
    reference module's parameters()."""
    gh, gw = grid_size(input_size, spec["patch_size"])
    n_tok = gh * gw  # T
    d, dh, p = spec["hidden_size"], spec["head_hidden_size"], spec["patch_size"]
    c_out = 2 * in_channels if learn_sigma else in_channels
    patch_dim, out_dim = p * p * in_channels, p * p * c_out

    def block(w: int) -> tuple[int, int]:
        """(parameters, per-token projection + MLP MACs) of one block of width w."""
        swiglu = int(int(w * spec["mlp_ratio"]) * 2 / 3)
        n = _linear(w, 3 * w) + _linear(w, w) + _linear(w, 6 * w)  # qkv, proj, adaLN
        n += _linear(w, 2 * swiglu) + _linear(swiglu, w) + 2 * w  # SwiGLU, norm scales
        return n, 4 * w * w + 3 * w * swiglu

    (p_back, m_back), (p_head, m_head) = block(d), block(dh)
    params = _linear(patch_dim, d) + _linear(patch_dim, dh)  # s_embedder, x_embedder
    params += 256 + _linear(512, d) + _linear(d, d)  # Fourier W and the time MLP
    params += (num_classes + 1) * d  # label table incl. the null class
    params += _linear(d, dh) if d != dh else 0  # s_projector
    params += dh + _linear(dh, 2 * dh) + _linear(dh, out_dim)  # final RMSNorm, adaLN, linear
    params += spec["depth"] * p_back + spec["head_depth"] * p_head

    macs = n_tok * patch_dim * (d + dh)  # two patch embeddings
    macs += 512 * d + d * d  # time MLP
    macs += n_tok * d * dh if d != dh else 0  # projector
    attention = 2 * n_tok * n_tok * (spec["depth"] * d + spec["head_depth"] * dh)
    macs += spec["depth"] * (6 * d * d + n_tok * m_back)
    macs += spec["head_depth"] * n_tok * (6 * dh * dh + m_head) + attention
    macs += n_tok * (2 * dh * dh + dh * out_dim)  # final adaLN (per token) + linear
    return dict(params=params, params_with_pos_embed=params + n_tok * d, macs=float(macs),
                flops=2.0 * float(macs), attention_macs=float(attention))


def dinov2_cost(
    hidden_size: int, num_layers: int, *, image_size: int, patch_size: int = 14,
    num_registers: int = 0, mlp_ratio: float = 4.0,
) -> dict[str, float]:
    """Forward MACs and FLOPs of one image through a DINOv2 ViT (GELU MLP sizes S/B/L) at
    image_size² (vdm_jax.nn.encoders.dinov2): patch embedding, and per block on the
    N = 1 + R + T tokens the q, k, v, out projections (4ND²), the MLP (2ND·4D) and the attention
    products QKᵀ, AV (2N²D), same convention as `model_cost`. REPA's target network: ViT-B/14
    on 224² (T = 256) is ≈ 23.2 GMACs."""
    g = image_size // patch_size
    n_tok = 1 + num_registers + g * g
    d, mlp = hidden_size, int(hidden_size * mlp_ratio)
    macs = g * g * patch_size * patch_size * 3 * d  # patch embedding
    macs += num_layers * (n_tok * (4 * d * d + 2 * d * mlp) + 2 * n_tok * n_tok * d)
    return dict(macs=float(macs), flops=2.0 * float(macs))


def meanflow_train_flops(cost: Mapping[str, float], guide_evaluations: int) -> float:
    """FLOPs per image of one MeanFlow training step (vdm_jax.core.meanflow) of a network of
    forward cost `cost` (`model_cost`: F = flops, A = 2 · attention_macs):

        F_step = g · F + (F + F_tan) + 2 F = (4 + g) · F + A,      F_tan = F + A

    g · F   the guided target ṽ, stop-gradient: g = guide_evaluations network evaluations per
            image (0 unguided; 1 with κ = 0: u(z, t, t | ∅); 2 with κ > 0: the conditional and
            null passes on 2B rows);
    F + F_tan  jax.jvp of u along (v, 0, 1): the primal forward F and the tangent, where every
            Linear's tangent is one more product with the same weight (ẋW, weights carry no
            tangent) but QKᵀ and AV have a tangent in both factors (Q̇Kᵀ + QK̇ᵀ, ȦV + AV̇),
            their MACs counted twice: F_tan = F + A;
    2 F     the backward pass, through u only (u_tgt and du/dt are stop-gradient): as for an
            ordinary step, whose total is 3 F.
    Elementwise work is left out, as in `model_cost`. DiT-XL/2 at 256 tokens: A ≈ 0.036 F, so
    F_step ≈ 6.04 F with κ > 0 (2.0 × an ordinary step's 3 F)."""
    if guide_evaluations not in (0, 1, 2):
        raise ValueError(f"guide_evaluations={guide_evaluations}; expected 0, 1 or 2")
    return (4 + guide_evaluations) * cost["flops"] + 2.0 * cost["attention_macs"]
