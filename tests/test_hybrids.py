"""Mamba/attention hybrids: sublayer traces, the attention decomposition, exactness, ALTI-Logit, causality.

Tiny random configs of each family are built here (no downloads); a family missing from the installed transformers
is skipped with its name.
"""

from __future__ import annotations

import importlib

import pytest
import torch

import latim_captum
from conftest import VOCAB, left_pad_mask, perturb_, random_ids
from latim_captum.adapters import get_adapter
from latim_captum.attention import attention_contributions_ref
from latim_captum.traces import AttentionTrace, LayerTrace, ParallelTrace, TokenwiseTrace

EXACT_TOL = 1e-5  # fp32 models (the MoE grouped matmul runs in fp32 only); unsupported variants miss by O(0.1-1)

COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2)


def _config(family: str, act: str, attn: str, proj_bias: bool):
    """(config, model class, expected mixer kinds per block) of a tiny ``family`` model."""
    transformers = importlib.import_module("transformers")
    names = {
        "bamba": "Bamba",
        "jamba": "Jamba",
        "granite": "GraniteMoeHybrid",
        "nemotron_h": "NemotronH",
        "falcon_h1": "FalconH1",
    }
    cfg_cls = getattr(transformers, f"{names[family]}Config", None)
    model_cls = getattr(transformers, f"{names[family]}ForCausalLM", None)
    if cfg_cls is None or model_cls is None:
        pytest.skip(f"transformers {transformers.__version__} has no {names[family]} models")
    if family == "bamba":
        cfg = cfg_cls(
            **COMMON,
            num_hidden_layers=3,
            attn_layer_indices=[1],
            hidden_act=act,
            mamba_n_heads=4,
            mamba_d_head=16,
            mamba_n_groups=2,
            mamba_d_state=8,
            mamba_chunk_size=4,
            mamba_proj_bias=proj_bias,
            attention_bias=True,
            mlp_bias=True,
        )
        kinds = ["mamba2", "attention", "mamba2"]
    elif family == "granite":
        # every Granite multiplier away from 1 so that a forgotten one fails the trace verification
        cfg = cfg_cls(
            **COMMON,
            num_hidden_layers=3,
            layer_types=["mamba", "attention", "mamba"],
            hidden_act=act,
            mamba_n_heads=4,
            mamba_d_head=16,
            mamba_n_groups=2,
            mamba_d_state=8,
            mamba_chunk_size=4,
            mamba_proj_bias=proj_bias,
            attention_bias=True,
            num_local_experts=3,
            num_experts_per_tok=2,
            shared_intermediate_size=40,
            position_embedding_type="rope",
            embedding_multiplier=3.0,
            logits_scaling=2.5,
            residual_multiplier=0.6,
            attention_multiplier=0.2,
        )
        kinds = ["mamba2", "attention", "mamba2"]
    elif family == "nemotron_h":
        # single-sublayer blocks (pattern "ME*-"): here ``kinds`` lists every sublayer
        cfg = cfg_cls(
            **COMMON,
            layers_block_type=["linear_attention", "moe", "full_attention", "mlp"],
            head_dim=8,
            mamba_num_heads=4,
            mamba_head_dim=16,
            mamba_hidden_act=act,
            n_groups=2,
            ssm_state_size=8,
            chunk_size=4,
            use_bias=proj_bias,
            n_routed_experts=3,
            num_experts_per_tok=2,
            moe_intermediate_size=24,
            moe_shared_expert_intermediate_size=20,
        )
        kinds = ["mamba2", "moe", "attention", "mlp"]
    elif family == "falcon_h1":
        # parallel attention + Mamba-2 per block; every µP multiplier away from 1 so that a forgotten one fails the
        # trace verification (mixers and logits), the gated norm on (norm after the gate: the HF default is before)
        cfg = cfg_cls(
            **COMMON,
            num_hidden_layers=2,
            hidden_act=act,
            mamba_d_ssm=64,
            mamba_n_heads=4,
            mamba_d_head=16,
            mamba_n_groups=2,
            mamba_d_state=8,
            mamba_chunk_size=4,
            mamba_rms_norm=True,
            mamba_norm_before_gate=False,
            mamba_proj_bias=proj_bias,
            projectors_bias=True,
            attention_bias=True,
            attention_in_multiplier=0.7,
            attention_out_multiplier=1.3,
            ssm_in_multiplier=0.8,
            ssm_out_multiplier=1.4,
            ssm_multipliers=[0.9, 1.1, 1.2, 0.8, 1.5],
            key_multiplier=4.0,
            embedding_multiplier=2.0,
            lm_head_multiplier=0.5,
            mlp_multipliers=[1.2, 0.7],
        )
        kinds = ["mamba2+attention", "mamba2+attention"]
    else:
        cfg = cfg_cls(
            **COMMON,
            num_hidden_layers=4,
            attn_layer_period=2,
            attn_layer_offset=1,
            expert_layer_period=2,
            expert_layer_offset=1,
            num_experts=3,
            num_experts_per_tok=2,
            hidden_act=act,
            mamba_d_state=4,
            mamba_dt_rank=4,
            mamba_proj_bias=proj_bias,
        )
        kinds = ["mamba1", "attention", "mamba1", "attention"]
    cfg.use_cache = False
    cfg._attn_implementation = attn
    return cfg, model_cls, kinds


def build_hybrid(family: str, *, act: str = "silu", seed: int = 0, attn: str = "sdpa", proj_bias: bool = True):
    cfg, model_cls, kinds = _config(family, act, attn, proj_bias)
    torch.manual_seed(seed)
    return perturb_(model_cls(cfg).eval(), seed=seed + 1), kinds


FAMILIES = ("bamba", "jamba", "granite", "nemotron_h", "falcon_h1")
SINGLE_SUBLAYER = ("nemotron_h",)  # one residual sublayer per block


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def test_sublayers_kinds_and_layer_indices(family):
    """A hybrid block is two residual sublayers: its mixer (index 2b) then its MLP/MoE (2b + 1); a NemotronH block
    is one sublayer (b), whatever its kind."""
    model, kinds = build_hybrid(family)
    tr = latim_captum.trace(model, random_ids(2, 6), dtype=torch.float64)
    adapter = get_adapter(model)
    assert adapter.n_layers == len(kinds)
    assert adapter.n_sublayers == tr.n_layers
    if family in SINGLE_SUBLAYER:
        assert tr.n_layers == len(kinds)
        assert tr.kinds == kinds
        assert [layer.layer for layer in tr.layers] == list(range(len(kinds)))
    else:
        assert tr.n_layers == 2 * len(kinds)
        assert tr.kinds[0::2] == kinds
        assert set(tr.kinds[1::2]) <= {"mlp", "moe"}
        assert [layer.layer for layer in tr.layers] == [b for b in range(len(kinds)) for _ in range(2)]
    if family in ("jamba", "granite", "nemotron_h"):
        assert "moe" in tr.kinds, "the expert layers must be traced as MoE sublayers"
    for prev, nxt in zip(tr.layers, tr.layers[1:]):
        assert torch.equal(nxt.residual, prev.block_output), "sublayers must chain along the residual stream"
    torch.testing.assert_close(tr.layers[-1].block_output, tr.readout.final_hidden)
    maps = latim_captum.interactions(tr, method="l2", activation="silu_gate", layers=[-1, 2])
    assert maps.shape == (2, 2, 6, 6)


@pytest.mark.parametrize("activation,act", [("silu_gate", "silu"), ("identity", "linear")])
def test_every_sublayer_reconstructs_exactly(family, activation, act):
    """Eqs 4 / 23: Σ_j T_i(x_j) + offset = the sublayer's output for Mamba (exact strategies), attention (given A)
    and MLP/MoE layers, with left padding and batch > 1."""
    model, _ = build_hybrid(family, act=act, seed=3)
    ids, mask = random_ids(3, 7, seed=2), left_pad_mask(3, 7, [0, 2, 3])
    err = latim_captum.reconstruction_error(model, ids, attention_mask=mask, activation=activation)
    assert bool((err < EXACT_TOL).all()), f"{activation} on a {act} {family} model: {err.tolist()}"
    tr = latim_captum.trace(model, ids, attention_mask=mask, dtype=torch.float64)
    keep = mask.bool()
    for idx, layer in enumerate(tr.layers):
        t = latim_captum.contributions(tr, layer=idx, activation=activation, include_residual=True)
        rebuilt = (t.sum(2) + layer.offset)[keep]
        assert _rel(rebuilt, layer.block_output[keep]) < EXACT_TOL, f"sublayer {idx} ({tr.kinds[idx]})"


def test_attention_weights_and_contributions_match_eager_oracle(family):
    """Independent oracle: the eager attention's own softmax weights (rotary, GQA, causal mask, padding) and
    T_i(x_j) = r Σ_h W_O^h A^h_ij (W_V^h LN(x_j) + b_V) written out head by head from the module's weights
    (r: Granite's residual multiplier, FalconH1's attention output multiplier, 1 elsewhere; FalconH1's attention
    sits inside the parallel sublayer and reads ``m_attn_in · LN(x)``)."""
    model, kinds = build_hybrid(family, seed=4, attn="eager")
    ids, mask = random_ids(2, 6, seed=5), left_pad_mask(2, 6, [0, 2])
    out = model(input_ids=ids, attention_mask=mask, output_attentions=True, use_cache=False)
    attn_weights = [a for a in out.attentions if a is not None]
    tr = latim_captum.trace(model, ids, attention_mask=mask, dtype=torch.float64)
    parts = [part for layer in tr.layers for part in getattr(layer, "parts", (layer,))]
    attn_layers = [layer for layer in parts if isinstance(layer, AttentionTrace)]
    assert len(attn_layers) == sum("attention" in kind for kind in kinds) == len(attn_weights)
    keep = mask.bool()
    for layer, theirs in zip(attn_layers, attn_weights):
        ours = layer.weights.permute(0, 2, 1, 3)[keep]  # [tokens, H, N] of non-padded queries
        torch.testing.assert_close(ours, theirs.double().permute(0, 2, 1, 3)[keep], atol=1e-5, rtol=1e-4)
        block = model.model.layers[layer.layer]
        attn = getattr(block, "self_attn", None) or get_adapter(model).mixer(block)
        h, heads, hd = layer.mixer_input, layer.weights.shape[1], attn.head_dim
        w_v, w_o = attn.v_proj.weight.double(), attn.o_proj.weight.double()
        b_v = attn.v_proj.bias.double() if attn.v_proj.bias is not None else torch.zeros(w_v.shape[0]).double()
        oracle = torch.zeros(2, 6, 6, h.shape[-1], dtype=torch.float64)
        for head in range(heads):
            kv = head // (heads // (w_v.shape[0] // hd))
            v = h @ w_v[kv * hd : (kv + 1) * hd].T + b_v[kv * hd : (kv + 1) * hd]  # [B, N, hd]
            proj = v @ w_o[:, head * hd : (head + 1) * hd].T  # [B, N, D]
            oracle += layer.weights[:, head, :, :, None] * proj[:, None]
        r = float(getattr(model.config, "residual_multiplier", getattr(model.config, "attention_out_multiplier", 1.0)))
        assert _rel(attention_contributions_ref(layer), r * oracle) < 1e-12


def test_alti_logit_rows_sum_to_logit(family):
    """Eq 8 with MLP/MoE sublayers in the rollout: Σ_j C_ij = logit − offset when every mixer is exact."""
    model, _ = build_hybrid(family, seed=6)
    ids, mask = random_ids(2, 7, seed=3), left_pad_mask(2, 7, [0, 3])
    res = latim_captum.alti_logit(model, ids, attention_mask=mask, activation="silu_gate", dtype=torch.float64)
    keep = mask.bool()
    gap = (res.scores.sum(-1) - (res.logits - res.offset))[keep]
    assert float(gap.abs().max()) < EXACT_TOL * float(res.logits.abs().max())
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.double()
    torch.testing.assert_close(res.logits[keep], logits.gather(-1, res.targets[..., None])[..., 0][keep])


def test_alti_rows_and_mlp_maps(family):
    """ALTI rows sum to 1 on every sublayer; an MLP/MoE sublayer mixes no tokens (identity ALTI, diagonal ℓ2)."""
    model, _ = build_hybrid(family, seed=7)
    tr = latim_captum.trace(model, random_ids(2, 6, seed=4))
    alti = latim_captum.interactions(tr, method="alti", activation="silu_gate")
    l2 = latim_captum.interactions(tr, method="l2", activation="silu_gate")
    torch.testing.assert_close(alti.sum(-1), torch.ones(2, tr.n_layers, 6))
    for idx, layer in enumerate(tr.layers):
        if isinstance(layer, TokenwiseTrace):
            torch.testing.assert_close(alti[:, idx], torch.eye(6).expand(2, 6, 6))
            torch.testing.assert_close(l2[:, idx], torch.diag_embed(layer.mixer_output.norm(dim=-1)))
        else:
            assert isinstance(layer, (AttentionTrace, LayerTrace, ParallelTrace))
            assert bool((l2[:, idx].tril(-1) > 0).any()), f"sublayer {idx} should mix tokens"


def test_causality_and_padding_invariance(family):
    """Rows never see later tokens (upper triangle 0; changing token 4 leaves rows 0-3 unchanged), and a
    left-padded run equals the unpadded one on the real tokens (without an in-projection bias: HF zeroes padded
    inputs before the in-projection, so its bias leaks through the conv and the model itself depends on padding)."""
    model, _ = build_hybrid(family, seed=8, proj_bias=False)
    ids = random_ids(1, 6, seed=6)
    plain = latim_captum.interactions(model, ids, method="alti", activation="silu_gate", dtype=torch.float64)
    assert float(plain.triu(1).abs().max()) == 0.0
    changed = ids.clone()
    changed[0, 4] = (changed[0, 4] + 1) % VOCAB
    other = latim_captum.interactions(model, changed, method="alti", activation="silu_gate", dtype=torch.float64)
    # fp32 resolution: the model's grouped expert matmul regroups tokens when one changes (measured 2.7e-9 on Granite)
    torch.testing.assert_close(other[..., :4, :4], plain[..., :4, :4], atol=1e-7, rtol=0)
    padded = torch.cat([torch.zeros(1, 2, dtype=torch.long), ids], dim=1)
    mask = left_pad_mask(1, 8, [2])
    pad = latim_captum.interactions(
        model, padded, attention_mask=mask, method="l2", activation="silu_gate", dtype=torch.float64
    )
    ref = latim_captum.interactions(model, ids, method="l2", activation="silu_gate", dtype=torch.float64)
    torch.testing.assert_close(pad[..., 2:, 2:], ref, atol=1e-5, rtol=1e-4)


def test_trace_leaves_model_as_found(family):
    model, _ = build_hybrid(family, seed=9)
    model.train()
    before = {name: p.clone() for name, p in model.state_dict().items()}
    latim_captum.trace(model, random_ids(1, 5))
    assert model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())


def test_inseq_methods_run_unchanged_on_a_hybrid():
    """The Inseq method ``latim`` gives ALTI-Logit rows on a hybrid; ``latim_alti`` keeps one map per sublayer."""
    inseq = pytest.importorskip("inseq")
    from test_inseq import FAST, PROMPT, TEXT, make_tokenizer

    tok = make_tokenizer()
    model, _ = build_hybrid("bamba", seed=3)
    model.config.pad_token_id, model.config.eos_token_id = 0, 1
    seq = inseq.load_model(model, "latim", tokenizer=tok).attribute(PROMPT, TEXT, **FAST).sequence_attributions[0]
    ids = tok(TEXT, return_tensors="pt").input_ids
    ref = latim_captum.alti_logit(model, ids[:, :-1], target=ids[:, 1:])
    n_prompt = len(PROMPT.split())
    for col, step in enumerate(range(n_prompt, ids.shape[1])):
        torch.testing.assert_close(seq.target_attributions[:step, col], ref.scores[0, step - 1, :step])
    alti = inseq.load_model(model, "latim_alti", tokenizer=tok).attribute(PROMPT, TEXT, **FAST)
    assert alti.sequence_attributions[0].target_attributions.shape[-1] == 2 * model.config.num_hidden_layers


def test_unsupported_hybrid_family_is_refused():
    transformers = importlib.import_module("transformers")
    if not hasattr(transformers, "Zamba2Config"):
        pytest.skip("transformers has no Zamba2")
    cfg = transformers.Zamba2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, n_mamba_heads=4, mamba_d_state=8, chunk_size=4, mamba_ngroups=1,
        layers_block_type=["mamba", "hybrid"],
    )  # fmt: skip
    with pytest.raises(TypeError, match="Zamba2ForCausalLM is not a supported"):
        get_adapter(transformers.Zamba2ForCausalLM(cfg))


def test_single_query_and_captum_on_a_hybrid(family):
    """The single-query ALTI-Logit row and the Captum classes work unchanged on hybrids (eq 8 row = full map row)."""
    from latim_captum import LatimALTI, LatimALTILogit
    from latim_captum.single_query import alti_logit_row

    model, _ = build_hybrid(family, seed=3)
    ids = random_ids(1, 7, seed=2)
    tr = latim_captum.trace(model, ids, dtype=torch.float64)
    full = latim_captum.alti_logit(tr, activation="silu_gate")
    row = alti_logit_row(tr, position=-1, activation="silu_gate", block=3)
    assert torch.allclose(row.scores, full.scores[:, -1], atol=1e-10)
    attr, delta = LatimALTILogit(model, activation="silu_gate").attribute(ids, return_convergence_delta=True)
    assert attr.shape == (1, 7)
    assert float(delta.abs().max()) < 1e-4 * float(full.logits.abs().max())
    alti = LatimALTI(model).attribute(ids, layer="all")
    assert alti.shape == (1, tr.n_layers, 7)
    assert torch.allclose(alti.sum(-1), torch.ones(1, tr.n_layers, dtype=alti.dtype), atol=1e-5)
    assert torch.allclose(alti[:, -1], LatimALTI(model).attribute(ids, layer=tr.n_layers - 1), atol=1e-12)
    with pytest.raises(ValueError, match=f"layer {tr.n_layers} is out of range"):
        LatimALTI(model).attribute(ids, layer=tr.n_layers)
    with pytest.raises(NotImplementedError, match="pure Mamba models"):
        latim_captum.mamba_attention(model, ids)


@pytest.mark.parametrize("rms_norm,norm_before_gate", [(True, True), (False, True)])
def test_falcon_h1_gate_variants_reconstruct_exactly(rms_norm, norm_before_gate):
    """FalconH1's other Mamba-2 gates (the gated RMSNorm after the gate is the test config's): norm then gate, and no
    norm (``u = v ⊙ SiLU(z)``); the parallel sublayer reconstructs exactly in both."""
    cfg, model_cls, _ = _config("falcon_h1", "silu", "sdpa", True)
    cfg.mamba_rms_norm, cfg.mamba_norm_before_gate = rms_norm, norm_before_gate
    torch.manual_seed(0)
    model = perturb_(model_cls(cfg).eval(), seed=1)
    ids, mask = random_ids(2, 7, seed=2), left_pad_mask(2, 7, [0, 2])
    err = latim_captum.reconstruction_error(model, ids, attention_mask=mask, activation="silu_gate")
    assert bool((err < EXACT_TOL).all()), err.tolist()
    tr = latim_captum.trace(model, ids, attention_mask=mask, dtype=torch.float64)
    mixers = [layer for layer in tr.layers if isinstance(layer, ParallelTrace)]
    assert len(mixers) == cfg.num_hidden_layers
    for layer in mixers:
        mamba, attn = layer.parts
        assert mamba.out_gate.shape == mamba.mixer_input.shape[:2] + (64,)
        # the parts' outputs add up to what the block added (the model rounds the sum in fp32)
        assert _rel(mamba.mixer_output + attn.mixer_output, layer.mixer_output) < EXACT_TOL
