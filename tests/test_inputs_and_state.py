"""Bad input gets a clear error; models come back in the dtype and mode they had; hooks never leak."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, MambaConfig, MambaModel

import latim_captum
from conftest import VOCAB, build, random_ids
from latim_captum.adapters import TraceMismatchError, get_adapter


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


@pytest.fixture
def model():
    return build("mamba1", seed=1)


def test_unsupported_model_names_supported_classes():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20))
    with pytest.raises(TypeError, match="GPT2LMHeadModel is not a supported Mamba model.*MambaForCausalLM.*Mamba2"):
        latim_captum.interactions(gpt2, torch.tensor([[1, 2]]))
    with pytest.raises(TypeError, match="expected a torch.nn.Module"):
        get_adapter("mamba")


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (
            dict(input_ids=torch.tensor([1, 2, 3])),
            ValueError,
            r"input_ids must have shape \[batch, seq_len\], got \(3,\)",
        ),
        (dict(input_ids=torch.tensor([[1, VOCAB]])), ValueError, f"token id {VOCAB} is out of the vocabulary"),
        (dict(input_ids=torch.tensor([[-1, 2]])), ValueError, "token id -1 is out of the vocabulary"),
        (dict(input_ids=torch.zeros(1, 0, dtype=torch.long)), ValueError, "empty"),
        (dict(input_ids=torch.tensor([[1.0, 2.0]])), TypeError, "integer tensor"),
        (dict(), ValueError, "exactly one of input_ids and inputs_embeds"),
        (dict(input_ids=torch.tensor([[1]]), inputs_embeds=torch.zeros(1, 1, 32)), ValueError, "exactly one"),
        (dict(inputs_embeds=torch.zeros(1, 3, 7)), ValueError, "d_model 7, the model expects 32"),
        (dict(inputs_embeds=torch.zeros(3, 32)), ValueError, "inputs_embeds must have shape"),
        (dict(inputs_embeds=torch.zeros(1, 3, 32, dtype=torch.long)), TypeError, "floating-point"),
        (
            dict(input_ids=torch.tensor([[1, 2]]), attention_mask=torch.ones(1, 3)),
            ValueError,
            r"attention_mask has shape",
        ),
        (dict(input_ids=torch.tensor([[1, 2]]), attention_mask=torch.tensor([[0, 2]])), ValueError, "only 0 and 1"),
        (dict(input_ids=torch.tensor([[1, 2]]), layers=2), ValueError, "layer 2 is out of range for a model with 2"),
        (dict(input_ids=torch.tensor([[1, 2]]), layers=[-3]), ValueError, "layer -3 is out of range"),
        (dict(input_ids=torch.tensor([[1, 2]]), method="rollout"), ValueError, "unknown method 'rollout'"),
        (dict(input_ids=torch.tensor([[1, 2]]), activation="gelu"), ValueError, "unknown activation strategy 'gelu'"),
        (
            dict(input_ids=torch.tensor([[1, 2]]), method="alti_logit", target=[1, 2, 3]),
            ValueError,
            r"target has shape \(3,\)",
        ),
        (
            dict(input_ids=torch.tensor([[1, 2]]), method="alti_logit", target=VOCAB + 5),
            ValueError,
            f"target token id {VOCAB + 5}",
        ),
        (dict(input_ids=torch.tensor([[1, 2]]), dtype=torch.bfloat16), TypeError, "compute dtype"),
    ],
)
def test_bad_inputs_raise_clear_errors(model, kwargs, error, match):
    with pytest.raises(error, match=match):
        latim_captum.interactions(model, **kwargs)
    assert _hook_count(model) == 0


def test_alti_logit_needs_lm_head():
    base = MambaModel(MambaConfig(hidden_size=32, state_size=4, num_hidden_layers=1, vocab_size=VOCAB))
    assert latim_captum.interactions(base, random_ids(1, 4), method="alti").shape == (1, 1, 4, 4)
    with pytest.raises(ValueError, match="needs a model with an LM head"):
        latim_captum.interactions(base, random_ids(1, 4), method="alti_logit")


def test_unsupported_variant_fails_loudly_and_removes_hooks(model):
    """A mixer whose output we cannot reproduce raises instead of giving a silently wrong map."""
    mixer = model.backbone.layers[1].mixer
    handle = mixer.register_forward_hook(lambda _m, _a, out: out * 1.5)
    try:
        with pytest.raises(TraceMismatchError, match="layer 1: recomputed mixer output differs"):
            latim_captum.interactions(model, random_ids(1, 5))
    finally:
        handle.remove()
    assert _hook_count(model) == 0


@pytest.mark.parametrize("bias", [False, True])
def test_chunked_logits_check_equals_the_whole_check(bias):
    """The readout check streams row chunks (no [B, N, V] copy); its error is the plain relative error."""
    from latim_captum.adapters.base import _logits_error, relative_error

    # float64: the products of each chunk then agree with those of one product to the last bits
    gen = torch.Generator().manual_seed(3)
    f64 = dict(generator=gen, dtype=torch.float64)
    normed, unembedding = torch.randn(2, 7, 8, **f64), torch.randn(11, 8, **f64)
    head_bias = torch.randn(11, **f64) if bias else None
    whole = normed @ unembedding.T + (head_bias if bias else 0)
    logits = whole + 0.01 * torch.randn(whole.shape, **f64)
    expected = relative_error(whole, logits)
    assert expected > 1e-4
    for chunk in (1, 11, 30, 2**26):  # one row, one row exactly, uneven chunks, everything at once
        assert _logits_error(normed, unembedding, head_bias, logits, chunk) == pytest.approx(expected, rel=1e-12)


def test_unsupported_lm_head_fails_loudly(model):
    """A head whose logits we cannot reproduce (here scaled) raises instead of a silently wrong ALTI-Logit."""
    handle = model.lm_head.register_forward_hook(lambda _m, _a, out: out * 1.5)
    try:
        with pytest.raises(TraceMismatchError, match="recomputed logits differ"):
            latim_captum.interactions(model, random_ids(1, 5), method="alti_logit")
    finally:
        handle.remove()
    assert _hook_count(model) == 0


def test_hooks_removed_when_forward_raises(model):
    def boom(*_args, **_kwargs):
        raise RuntimeError("boom")

    handle = model.backbone.layers[0].mixer.register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        latim_captum.trace(model, random_ids(1, 4))
    handle.remove()
    assert _hook_count(model) == 0
    assert not model.training


def test_cuda_only_kernel_on_cpu_is_explained(model):
    """transformers 5.x calls mamba-ssm / causal-conv1d whenever they are installed, even for CPU tensors; the
    kernel's own message ("Expected x.is_cuda() to be true") becomes one that says why and what to do."""

    from latim_captum.baselines import mamba_attribution

    def cuda_kernel(*_args, **_kwargs):
        raise RuntimeError("Expected x.is_cuda() to be true, but got false.  (Could this error message be improved?)")

    handle = model.backbone.layers[1].mixer.register_forward_pre_hook(cuda_kernel)
    try:
        with pytest.raises(RuntimeError, match="on cpu called a CUDA-only kernel .*run the model on CUDA") as exc:
            latim_captum.LatimALTI(model).attribute(random_ids(1, 4))
        with pytest.raises(RuntimeError, match="on cpu called a CUDA-only kernel"):  # the gradient baselines too
            mamba_attribution(model, random_ids(1, 4))
    finally:
        handle.remove()
    assert "is_cuda()" in str(exc.value.__cause__) and _hook_count(model) == 0


@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_bf16_model_matches_fp32_and_is_left_untouched(kind):
    """bf16 weights → float32 maps within bf16 tolerance of the fp32 model's; dtype and train mode restored."""
    fp32 = build(kind, seed=12)
    bf16 = build(kind, seed=12).to(torch.bfloat16).train()
    ids = random_ids(2, 8, seed=1)
    for method in ("l2", "alti", "alti_logit"):
        target = {"target": 5} if method == "alti_logit" else {}  # the per-layer maps read no target
        ref = latim_captum.interactions(fp32, ids, method=method, **target)
        got = latim_captum.interactions(bf16, ids, method=method, **target)
        assert got.dtype == torch.float32
        rel = float((got - ref).norm() / ref.norm())
        assert rel < 0.05, f"{method}: bf16 vs fp32 relative gap {rel:.3f}"
    assert bf16.training, "train mode must be restored"
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    assert _hook_count(bf16) == 0


def test_inputs_embeds_equal_input_ids(kind):
    model = build(kind, seed=3)
    ids = random_ids(1, 6)
    embeds = model.get_input_embeddings()(ids).detach()
    for method in ("alti", "alti_logit"):
        a = latim_captum.interactions(model, ids, method=method)
        b = latim_captum.interactions(model, inputs_embeds=embeds, method=method)
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("family", ["mamba2", "zamba2", "jamba"])
def test_trace_moves_between_devices(family):
    """``ModelTrace.to``: every tensor moves (nested shared-block and attention traces included), nothing else
    changes, and the maps of the moved-back trace are the original's."""
    from dataclasses import fields, is_dataclass

    from test_hybrids import build_hybrid

    model = build("mamba2", seed=4) if family == "mamba2" else build_hybrid(family, seed=4)[0]
    tr = latim_captum.trace(model, random_ids(2, 6, seed=4))

    def leaves(value):
        if isinstance(value, torch.Tensor):
            yield value
        elif is_dataclass(value):
            for f in fields(value):
                yield from leaves(getattr(value, f.name))
        elif isinstance(value, (list, tuple)):
            for v in value:
                yield from leaves(v)

    before = list(leaves(tr))
    on_meta = tr.to("meta")
    after = list(leaves(on_meta))
    assert len(after) == len(before) > 10 and all(t.device.type == "meta" for t in after)
    assert all(a.shape == b.shape and a.dtype == b.dtype for a, b in zip(after, before))
    assert on_meta.kinds == tr.kinds and all(t.device.type == "cpu" for t in leaves(tr))
    back = tr.to("cpu")  # rebuilt dataclasses, same tensors: the maps must not change
    assert torch.equal(latim_captum.interactions(back, method="alti"), latim_captum.interactions(tr, method="alti"))


def test_trace_reuse_rejects_inputs(model):
    tr = latim_captum.trace(model, random_ids(1, 4))
    with pytest.raises(ValueError, match="not with a ModelTrace"):
        latim_captum.interactions(tr, random_ids(1, 4))


def test_tf32_flags_off_while_recomputing_and_restored(model, monkeypatch):
    """Recomputation and the reference maps run in IEEE fp32 (no TF32 conv/matmul); the user's flags come back."""
    from latim_captum.maps import layer_maps_fast

    adapter = get_adapter(model)
    seen = []
    original = type(adapter).mixer_trace

    def spy(self, *args, **kwargs):
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(adapter), "mixer_trace", spy)
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as many training scripts do
    try:
        tr = latim_captum.trace(adapter, random_ids(1, 6))
        assert seen and all(flags == (False, False) for flags in seen), seen
        latim_captum.interactions(tr, method="alti", backend="ref")
        layer_maps_fast(tr.layers[0], "silu", ("l2",), precision="highest")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
