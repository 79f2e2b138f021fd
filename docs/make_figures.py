"""Make the documentation figures: LaTIM next to Captum's gradient methods, and LaTIM maps side by side.

Run by ``docs/conf.py`` at build time (or by hand: ``python docs/make_figures.py``); writes PNGs to
``docs/_generated/``. The model is a tiny randomly initialised Mamba built from a config (no hub access), so the
figures show the API and the layout, not linguistic findings.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402
from captum.attr import InputXGradient, LayerIntegratedGradients, Saliency  # noqa: E402
from transformers import MambaConfig, MambaForCausalLM  # noqa: E402

from latim_captum import LatimALTI, LatimALTILogit, LatimL2  # noqa: E402
from latim_captum.viz import plot_comparison  # noqa: E402

OUT = Path(__file__).resolve().parent / "_generated"
WORDS = "the quick brown fox jumps over the lazy dog and runs".split()


def build_model() -> MambaForCausalLM:
    torch.manual_seed(0)
    config = MambaConfig(hidden_size=64, state_size=8, num_hidden_layers=4, vocab_size=64, use_cache=False)
    model = MambaForCausalLM(config).eval()
    with torch.no_grad():  # move the weights off their init so the maps are not trivially flat
        for param in model.parameters():
            param.add_(0.2 * torch.randn_like(param) * param.std().clamp_min(0.05))
    return model


def main() -> None:
    OUT.mkdir(exist_ok=True)
    model = build_model()
    vocab = {w: i + 1 for i, w in enumerate(dict.fromkeys(WORDS))}
    ids = torch.tensor([[vocab[w] for w in WORDS]])
    embeds = model.get_input_embeddings()(ids).detach()
    target = model(ids).logits[:, -1].argmax(-1)  # the prediction every method explains

    def next_logits(input_ids=None, inputs_embeds=None):
        return model(input_ids=input_ids, inputs_embeds=inputs_embeds).logits[:, -1]

    def from_embeds(x):
        return next_logits(inputs_embeds=x)

    scores = {
        "LaTIM (ALTI-Logit)": LatimALTILogit(model, activation="silu_gate").attribute(ids, target=target),
        "LaTIM (ALTI)": LatimALTI(model).attribute(ids),
        "Layer IG (embeddings)": LayerIntegratedGradients(next_logits, model.backbone.embeddings)
        .attribute(ids, target=target, n_steps=16)
        .sum(-1),
        "Input × Gradient": InputXGradient(from_embeds)
        .attribute(embeds.clone().requires_grad_(), target=target)
        .sum(-1),
        "Saliency": Saliency(from_embeds).attribute(embeds.clone().requires_grad_(), target=target).sum(-1),
    }
    fig = plot_comparison({k: v[0] for k, v in scores.items()}, WORDS, title="Attributions of the next-token logit")
    fig.savefig(OUT / "comparison_gradients.png", dpi=100)

    maps = {
        "LaTIM (ℓ2), last layer": LatimL2(model).attribute(ids, return_matrix=True)[0],
        "LaTIM (ALTI), rollout": LatimALTI(model).attribute(ids, return_matrix=True)[0],
        "LaTIM (ALTI-Logit)": LatimALTILogit(model, activation="silu_gate").attribute(ids, return_matrix=True)[0],
    }
    fig = plot_comparison(maps, WORDS, title="Token-to-token maps of the same input")
    fig.savefig(OUT / "comparison_maps.png", dpi=100)


if __name__ == "__main__":
    main()
