"""The one transformer block of the backbones (DiT, JiT, DDT) and what they share to build it.

An AdaLN-Zero block with conditioning c, per sample (B, D) or per token (B, T, D):

    (b₁, a₁, g₁, b₂, a₂, g₂) = Linear(SiLU(c)) → 6 × D, the Linear zero-initialized
    x ← x + g₁ ⊙ Attn(Norm(x)·(1 + a₁) + b₁)
    x ← x + g₂ ⊙ MLP(Norm(x)·(1 + a₂) + b₂)

so every block starts as the identity. A `BlockSpec` chooses the parts:

    DiT  (DIT_BLOCK)   LayerNorm without affine, attention with qkv bias, GELU(tanh) MLP
    JiT  (JIT_BLOCK)   RMSNorm, attention with q/k RMSNorm and 2D RoPE, SwiGLU with biases
    DDT  (DDT_BLOCK)   LightningDiT's: as JiT, without the qkv and SwiGLU biases

Scan over layers (`Backbone(scan_layers=True)`): a backbone's N blocks are one AdaLNBlock whose
parameters carry a leading layer axis (logical name LAYER_AXIS, never sharded), built by
nnx.vmap and run by jax.lax.scan over the layers' split state, so the program traces one block
whatever N. Unrolled, the blocks are an nnx.List (paths blocks.0.attn.qkv.kernel …); scanned,
one stack (blocks.attn.qkv.kernel of shape (N, D, 3D)). `stack_layers` / `unstack_layers`
convert parameter trees between the two layouts (importers and exports convert at the
boundary). `run_blocks` runs blocks [start, stop) of either layout, so a hidden state after
block k (REPA) splits the scan at k.

Remat (`remat`, REMAT_POLICIES): jax.checkpoint around each block (the scan's body) with
    'none'           save every residual (no recomputation)
    'full'           save only each block's input; the backward pass recomputes the block
    'dots_saveable'  save every matmul output (JAX's dots_saveable), attention logits included
    'dots_no_batch'  save the matmul outputs without batch dimensions: the Linear layers'
                     (JAX's dots_with_no_batch_dims_saveable); attention and elementwise work
                     are recomputed
    'offload_dots'   as 'dots_no_batch', but the saved outputs go to pinned host memory
                     (offload_dot_with_no_batch_dims; CPU hosts accept it too: their pinned
                     host memory is the same RAM)
Gradients are those of 'none' (tests/test_scan_layers.py).

Parameter paths are those of the released checkpoints' modules (norm1, attn.qkv, attn.q_norm,
attn.proj, norm2, mlp.fc1 / mlp.w12, adaLN_modulation.linear), so importers map names 1:1.
Precision: norms, q/k normalization and RoPE in float32; matmuls and the residual stream in
`dtype`; the softmax in float32 inside jax.nn.dot_product_attention.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal, Required, TypedDict

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from vdm_jax.nn.layers import (
    AdaLNModulation,
    FinalLayer,
    Mlp,
    SwiGLU,
    apply_rope,
    check_hidden_index,
    check_inputs,
    dense,
    grid_size,
    layer_norm,
    modulate,
    patchify,
    per_token,
    rms_norm,
    unpatchify,
)

Array = jax.Array
Dtype = Any
Rope = tuple[Array, Array]  # cos, sin tables (T, Dh)

LAYER_AXIS = "layers"  # logical axis of stacked blocks; vdm_jax.parallel.mesh never shards it
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_no_batch", "offload_dots")
# The attributes holding a backbone's blocks (DiT, JiT: blocks; DDT: its two halves).
BLOCK_LISTS = ("blocks", "encoder_blocks", "decoder_blocks")


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """The parts of an AdaLN-Zero block: norm 'layer' (affine-free LayerNorm) or 'rms'
    (RMSNorm with a learned scale); qk_norm: RMSNorm on each head's q and k; qkv_bias; mlp
    'gelu' (Linear → GELU(tanh) → Linear) or 'swiglu' (width int(2/3 · mlp_ratio · D));
    mlp_bias (SwiGLU only). RoPE is not a part: the backbone passes its tables, or None."""

    norm: Literal["layer", "rms"]
    qk_norm: bool
    qkv_bias: bool
    mlp: Literal["gelu", "swiglu"]
    mlp_bias: bool = True


DIT_BLOCK = BlockSpec(norm="layer", qk_norm=False, qkv_bias=True, mlp="gelu")
JIT_BLOCK = BlockSpec(norm="rms", qk_norm=True, qkv_bias=True, mlp="swiglu")
DDT_BLOCK = BlockSpec(norm="rms", qk_norm=True, qkv_bias=False, mlp="swiglu", mlp_bias=False)


class Attention(nnx.Module):
    """Multi-head self-attention, fused qkv (with or without bias), output projection with
    bias; optionally RMS-normalized q and k per head (learned scale) and rotary positions.
    x (B, T, D), rope: None or cos, sin (T, Dh) → (B, T, D)."""

    def __init__(
        self, hidden_size: int, num_heads: int, *, dtype: Dtype, rngs: nnx.Rngs,
        qkv_bias: bool = True, qk_norm: bool = False,
    ):
        self.num_heads = num_heads
        self.dtype = dtype
        head_dim = hidden_size // num_heads
        self.qkv = dense(hidden_size, 3 * hidden_size, ("embed", "heads"), dtype=dtype, rngs=rngs,
                         use_bias=qkv_bias)
        if qk_norm:
            self.q_norm = rms_norm(head_dim, None, rngs)
            self.k_norm = rms_norm(head_dim, None, rngs)
        self.qk_norm = qk_norm
        self.proj = dense(hidden_size, hidden_size, ("heads", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, rope: Rope | None = None) -> Array:
        qkv = self.qkv(x)  # (B, T, 3D)
        q, k, v = rearrange(qkv, "b t (s n h) -> s b t n h", s=3, n=self.num_heads)  # (B,T,N,Dh)
        if self.qk_norm or rope is not None:
            # Normalized and rotated in float32, then back to the compute dtype.
            q, k = q.astype(jnp.float32), k.astype(jnp.float32)  # (B, T, N, Dh) f32
            if self.qk_norm:
                q, k = self.q_norm(q), self.k_norm(k)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            q, k = q.astype(self.dtype), k.astype(self.dtype)
        # implementation=None: cuDNN flash attention on GPU for bf16, XLA elsewhere; the softmax
        # is float32 in both.
        o = jax.nn.dot_product_attention(q, k, v)  # (B, T, N, Dh)
        return self.proj(rearrange(o, "b t n h -> b t (n h)"))  # (B, T, D)


class AdaLNBlock(nnx.Module):
    """The AdaLN-Zero transformer block (module docstring), parts chosen by `spec`.
    x (B, T, D), c (B, D) or (B, T, D), rope None or 2 × (T, Dh) → (B, T, D)."""

    def __init__(
        self, hidden_size: int, num_heads: int, mlp_ratio: float, spec: BlockSpec, *,
        dtype: Dtype, rngs: nnx.Rngs,
    ):
        self.dtype = dtype
        mlp_hidden = int(hidden_size * mlp_ratio)
        # Built in this order so the weights draw the random numbers the three former
        # per-family blocks drew (norm1, attn, norm2, mlp, modulation).
        self.norm1 = _norm(spec.norm, hidden_size, rngs)
        self.attn = Attention(hidden_size, num_heads, dtype=dtype, rngs=rngs,
                              qkv_bias=spec.qkv_bias, qk_norm=spec.qk_norm)
        self.norm2 = _norm(spec.norm, hidden_size, rngs)
        if spec.mlp == "gelu":
            self.mlp = Mlp(hidden_size, mlp_hidden, dtype=dtype, rngs=rngs)
        else:
            self.mlp = SwiGLU(hidden_size, mlp_hidden, dtype=dtype, rngs=rngs,
                              use_bias=spec.mlp_bias)
        self.adaLN_modulation = AdaLNModulation(hidden_size, 6, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, c: Array, rope: Rope | None = None) -> Array:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c)
        h = modulate(self.norm1(x.astype(jnp.float32)), shift_msa, scale_msa)  # (B, T, D) f32
        x = x + per_token(gate_msa) * self.attn(h.astype(self.dtype), rope)  # (B, T, D)
        h = modulate(self.norm2(x.astype(jnp.float32)), shift_mlp, scale_mlp)  # (B, T, D) f32
        x = x + per_token(gate_mlp) * self.mlp(h.astype(self.dtype))  # (B, T, D)
        return x


def _norm(kind: str, hidden_size: int, rngs: nnx.Rngs) -> nnx.Module:
    if kind == "layer":
        return layer_norm(hidden_size, rngs)
    return rms_norm(hidden_size, "embed", rngs)


class BackboneArgs(TypedDict, total=False):
    """The constructor arguments every backbone (DiT, JiT, DDT) takes, passed on to `Backbone`:
    input_size (H, W) or an int, in_channels C, num_classes (0 = unconditional), patch_size p,
    hidden_size D, num_heads N, mlp_ratio (default 4), learn_sigma (default False: C_out = C),
    dtype (compute dtype, default float32), scan_layers (default False), remat (one of
    REMAT_POLICIES, default 'none'); module docstring."""

    input_size: Required[tuple[int, int] | int]
    in_channels: Required[int]
    num_classes: Required[int]
    patch_size: Required[int]
    hidden_size: Required[int]
    num_heads: Required[int]
    mlp_ratio: float
    learn_sigma: bool
    dtype: Dtype
    scan_layers: bool
    remat: str


class Backbone(nnx.Module):
    """What every transformer backbone knows of its shape, set by this one constructor path
    (arguments: `BackboneArgs`): grid (H/p, W/p), image_size, patch_size, in_channels,
    out_channels (2C with learn_sigma), num_classes, hidden_size D, num_heads, head_dim D/N,
    mlp_ratio, dtype; and its blocks of `block` parts (`make_blocks`). Subclasses call this
    first, then build their embedders and blocks."""

    def __init__(
        self, block: BlockSpec, *, input_size: tuple[int, int] | int, in_channels: int,
        num_classes: int, patch_size: int, hidden_size: int, num_heads: int,
        mlp_ratio: float = 4.0, learn_sigma: bool = False, dtype: Dtype = jnp.float32,
        scan_layers: bool = False, remat: str = "none",
    ):
        if not isinstance(scan_layers, bool):
            raise ValueError(f"scan_layers must be True or False, got {scan_layers!r}.")
        if remat not in REMAT_POLICIES:
            raise ValueError(f"remat={remat!r}; expected one of {REMAT_POLICIES}.")
        self.grid = grid_size(input_size, patch_size)
        self.image_size = (self.grid[0] * patch_size, self.grid[1] * patch_size)
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.num_classes = num_classes
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.mlp_ratio = mlp_ratio
        self.block_spec = block
        self.dtype = dtype
        self.scan_layers = scan_layers
        self.remat = remat

    def make_blocks(self, depth: int, rngs: nnx.Rngs) -> nnx.List | AdaLNBlock:
        """`depth` AdaLN-Zero blocks of this backbone's spec: an nnx.List built one after the
        other, or with scan_layers one AdaLNBlock whose parameters are stacked (depth, ...)
        on LAYER_AXIS, each layer initialized from its own split of the parameter key."""

        def block(rngs: nnx.Rngs) -> AdaLNBlock:
            return AdaLNBlock(self.hidden_size, self.num_heads, self.mlp_ratio, self.block_spec,
                              dtype=self.dtype, rngs=rngs)

        if not self.scan_layers:
            return nnx.List([block(rngs) for _ in range(depth)])
        stacked = nnx.vmap(block, in_axes=0, out_axes=0,
                           transform_metadata={nnx.PARTITION_NAME: LAYER_AXIS})
        return nnx.split_rngs(splits=depth)(stacked)(rngs)

    def run_blocks(
        self, blocks: nnx.List | AdaLNBlock, x: Array, c: Array, rope: Rope | None = None,
        start: int = 0, stop: int | None = None,
    ) -> Array:
        """x (B, T, D) through blocks [start, stop) (stop None: to the last) under the
        conditioning c (B, D) or (B, T, D) and rope (None or 2 × (T, Dh)) → (B, T, D).
        Scanned blocks run as one jax.lax.scan over the layers' slice of the stack; every
        block runs under this backbone's remat policy."""
        stop = num_layers(blocks) if stop is None else stop
        if self.remat == "none" and not self.scan_layers:
            for i in range(start, stop):
                x = blocks[i](x, c, rope)  # (B, T, D)
            return x
        if self.scan_layers:
            graphdef, state = nnx.split(blocks)
            if (start, stop) != (0, num_layers(blocks)):
                state = jax.tree.map(lambda a: a[start:stop], state)  # (stop − start, ...)
            layer = _checkpointed(graphdef, self.remat, prevent_cse=False)

            def body(x: Array, layer_state: Any) -> tuple[Array, None]:
                return layer(x, layer_state, c, rope), None  # (B, T, D)

            x, _ = jax.lax.scan(body, x, state)
            return x
        for i in range(start, stop):
            graphdef, state = nnx.split(blocks[i])
            x = _checkpointed(graphdef, self.remat, prevent_cse=True)(x, state, c, rope)
        return x

    def run_with_hidden(
        self, blocks: nnx.List | AdaLNBlock, x: Array, c: Array, rope: Rope | None = None,
        return_hidden: int | None = None,
    ) -> tuple[Array, Array | None]:
        """All blocks (`run_blocks`) → (B, T, D), and the hidden state after block
        return_hidden (B, T, D) (None without): the run splits there."""
        if return_hidden is None:
            return self.run_blocks(blocks, x, c, rope), None
        hidden = self.run_blocks(blocks, x, c, rope, 0, return_hidden)  # (B, T, D)
        return self.run_blocks(blocks, hidden, c, rope, return_hidden), hidden

    def make_final_layer(self, norm: nnx.Module, rngs: nnx.Rngs) -> FinalLayer:
        """norm → AdaLN shift/scale → Linear(D, p·p·C_out), zero-initialized."""
        return FinalLayer(self.hidden_size, self.patch_size, self.out_channels, norm,
                          dtype=self.dtype, rngs=rngs)

    def check(self, x: Array, t: Array, y: Array, return_hidden: int | None, depth: int) -> None:
        """Readable errors for inputs of the wrong shape or type, and for a return_hidden that
        names no block of the `depth` that can return one (at trace time: shapes are static)."""
        check_inputs(x, t, y, self.image_size, self.in_channels)
        check_hidden_index(return_hidden, depth)

    def tokens(self, x: Array) -> Array:
        """(B, H, W, C) → patches (B, T, p·p·C) in the compute dtype."""
        return patchify(x, self.patch_size).astype(self.dtype)

    def image(self, h: Array) -> Array:
        """(B, T, p·p·C_out) → (B, H, W, C_out); inverse of `tokens`' patchify."""
        return unpatchify(h, self.grid, self.patch_size)


def num_layers(blocks: nnx.List | AdaLNBlock) -> int:
    """How many blocks an nnx.List or a stacked (scanned) AdaLNBlock holds."""
    if isinstance(blocks, nnx.List):
        return len(blocks)
    return blocks.adaLN_modulation.linear.kernel.shape[0]


def remat_policy(name: str) -> Callable[..., Any] | None:
    """The jax.checkpoint policy of a REMAT_POLICIES name other than 'none' (module
    docstring); None for 'full' (nothing saved but the inputs)."""
    if name not in REMAT_POLICIES or name == "none":
        raise ValueError(f"remat={name!r}; expected one of {REMAT_POLICIES[1:]}.")
    policies = jax.checkpoint_policies
    return {
        "full": None,
        "dots_saveable": policies.dots_saveable,
        "dots_no_batch": policies.dots_with_no_batch_dims_saveable,
        "offload_dots": policies.offload_dot_with_no_batch_dims("device", "pinned_host"),
    }[name]


def _checkpointed(graphdef: Any, remat: str, *, prevent_cse: bool) -> Callable[..., Array]:
    """(x, block state, c, rope) → the block's output, under jax.checkpoint with the remat
    policy (the plain function for 'none'). prevent_cse may be False inside a scan."""

    def apply(x: Array, state: Any, c: Array, rope: Rope | None) -> Array:
        return nnx.merge(graphdef, state)(x, c, rope)

    if remat == "none":
        return apply
    return jax.checkpoint(apply, policy=remat_policy(remat), prevent_cse=prevent_cse)


def _is_per_block(tree: Any) -> bool:
    return isinstance(tree, Mapping) and len(tree) > 0 and all(
        isinstance(k, int) or (isinstance(k, str) and k.isdigit()) for k in tree)


def stack_layers(params: Mapping[str, Any]) -> dict[str, Any]:
    """A parameter tree (nnx.to_pure_dict layout) with per-block subtrees under BLOCK_LISTS,
    {0: {...}, 1: {...}, ...} (an unrolled backbone's, an importer's), → the scanned layout:
    each leaf stacked over the blocks on a new leading axis. Subtrees already stacked are
    kept, so the function is idempotent."""
    out = dict(params)
    for name in BLOCK_LISTS:
        tree = out.get(name)
        if _is_per_block(tree):
            layers = [tree[k] for k in sorted(tree, key=int)]
            out[name] = jax.tree.map(lambda *a: jnp.stack(a), *layers)
    return out


def unstack_layers(params: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of `stack_layers`: stacked subtrees under BLOCK_LISTS → {i: layer i's tree}
    (the unrolled layout, whose paths the official checkpoints name). Per-block subtrees are
    kept, so the function is idempotent."""
    out = dict(params)
    for name in BLOCK_LISTS:
        tree = out.get(name)
        if isinstance(tree, Mapping) and tree and not _is_per_block(tree):
            depth = jax.tree.leaves(tree)[0].shape[0]
            out[name] = {i: jax.tree.map(lambda a, i=i: a[i], tree) for i in range(depth)}
    return out
