"""ℓ2 maps of a Mamba-2 layer and an attention layer of one tiny random Bamba hybrid (docs/hybrids.md's figure).

Run: ``python docs/scripts/hybrid_figure.py [out.png]`` (CPU, a few seconds, no downloads).
"""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from transformers import BambaConfig, BambaForCausalLM  # noqa: E402

import latim_captum  # noqa: E402


def main(path: str = "docs/_generated/hybrid_l2_maps.png") -> None:
    torch.manual_seed(0)
    cfg = BambaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, attn_layer_indices=[1], mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=2,
        mamba_d_state=8, mamba_chunk_size=4, use_cache=False,
    )  # fmt: skip
    model = BambaForCausalLM(cfg).eval()
    ids = torch.randint(0, 40, (1, 10))
    tr = latim_captum.trace(model, ids)
    maps = latim_captum.interactions(tr, method="l2", activation="silu_gate")[0]
    picks = [tr.kinds.index("mamba2"), tr.kinds.index("attention")]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    for ax, idx in zip(axes, picks):
        im = ax.imshow(maps[idx].numpy(), cmap="viridis")
        ax.set_title(f"sublayer {idx}: {tr.kinds[idx]} (block {tr.layers[idx].layer})")
        ax.set_xlabel("source token j")
        ax.set_ylabel("query token i")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    import os

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    print(path)


if __name__ == "__main__":
    main(*sys.argv[1:])
