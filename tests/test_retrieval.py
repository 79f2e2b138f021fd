"""Long-context retrieval study (paper §4.3, Tables 4 and 6, Figure 3): generators, measures, rows, training, bench.

Expected values are worked out by hand in the comments or read back from the sample's own construction (spans
decoded to the words they must hold); the single-query rows are checked against the full maps of the public API."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latim_captum.retrieval.data import FILLER, KEYS, TINY_TASK, Needle, RetrievalSample, RetrievalTask, planted_counts
from latim_captum.retrieval.metrics import (
    ANSWERED_CATEGORIES,
    CATEGORIES,
    answered_labels,
    fwe_labels,
    fwe_outcome,
    passkey_labels,
    passkey_outcome,
    span_shares,
    summarize_passkey,
)

TASK = RetrievalTask(**TINY_TASK)
GOLD, FIRST, OTHER, FILL, QUERY = range(5)


# --- generators ---------------------------------------------------------------------------------------------------


def test_passkey_is_seeded_and_exactly_as_long_as_asked():
    a = TASK.passkey(5, length=160, keys=4, seed=3)
    b = TASK.passkey(5, length=160, keys=4, seed=3)
    c = TASK.passkey(5, length=160, keys=4, seed=4)
    assert all(np.array_equal(x.ids, y.ids) and x.gold == y.gold for x, y in zip(a, b))
    assert not all(np.array_equal(x.ids, y.ids) for x, y in zip(a, c))
    assert {s.length for s in a} == {160}
    with pytest.raises(ValueError, match="too short"):
        TASK.passkey(1, length=TASK.passkey_overhead(4) - 1, keys=4, seed=0)
    # the tightest fit: no filler at all, needles back to back
    tight = TASK.passkey(1, length=TASK.passkey_overhead(4), keys=4, seed=0)[0]
    assert tight.length == TASK.passkey_overhead(4)


@pytest.mark.parametrize("keys", KEYS)
def test_passkey_spans_hold_what_they_name(keys):
    for s in TASK.passkey(20, length=192, keys=keys, seed=keys):
        words = TASK.decode(s.ids)
        assert len(s.needles) == keys
        assert len({n.key for n in s.needles}) == keys and len({n.value for n in s.needles}) == keys
        assert len({n.key[0] for n in s.needles}) == keys and len({n.key[1] for n in s.needles}) == keys
        starts = [n.start for n in s.needles]
        assert starts == sorted(starts), "needles are listed in order of appearance"
        for n in s.needles:
            assert words[n.start : n.stop] == (
                "one", "of", "the", "special", "magic", "numbers", "for", *n.key, "is", ":", *n.value, "."
            )  # fmt: skip
            assert words[n.key_start : n.key_start + 2] == n.key
            assert words[n.value_start : n.value_stop] == n.value
            assert n.span == (n.key_start, n.value_stop)
            # at a sentence boundary of the filler: after the intro's or a sentence's full stop, or another needle
            assert words[n.start - 1] == "."
        gold = s.needles[s.gold]
        assert s.answer == gold.value
        assert words[s.answer_start : s.answer_start + len(s.answer)] == gold.value
        assert words[-1] == "<eos>"
        question = words[s.haystack[1] : s.answer_start]
        assert question.count(gold.key[0]) == 2 and question.count(gold.key[1]) == 2
        assert all(n.key[0] not in question for k, n in enumerate(s.needles) if k != s.gold)
        # the filler is made of RULER's sentences only
        filler_words = {w for sentence in FILLER for w in sentence.split()}
        covered = {p for n in s.needles for p in range(n.start, n.stop)}
        assert {words[p] for p in range(*s.haystack) if p not in covered} <= filler_words
        # row answer_start - 1 + t predicts answer token t
        assert list(s.answer_rows) == [s.answer_start - 1 + t for t in range(len(s.answer))]
        assert s.gold_is_first == (s.gold == 0)


@pytest.mark.parametrize("keys", [2, 4])
def test_gold_key_is_first_one_time_in_k(keys):
    samples = TASK.passkey(400, length=128, keys=keys, seed=11)
    share = np.mean([s.gold_is_first for s in samples])
    # binomial(400, 1/k): standard deviation ≤ 0.025, so ±0.08 is over 3 deviations
    assert abs(share - 1 / keys) < 0.08, share


def test_planted_counts_hand_values_and_refusals():
    # 20·(1, ½, ⅓, ¼)/(25/12) = 9.6, 4.8, 3.2, 2.4 → floors 9, 4, 3, 2 (sum 18); the remainder 2 goes to rank 1
    assert planted_counts(20, 4, 1.0) == (11, 4, 3, 2)
    # α = 2: 30·(1, ¼, ⅑, 1/16)/1.4236 = 21.07, 5.27, 2.34, 1.32 → 21, 5, 2, 1 (29) → rank 1 gets 1 more
    assert planted_counts(30, 4, 2.0) == (22, 5, 2, 1)
    with pytest.raises(ValueError, match="strictly ordered"):
        planted_counts(8, 6, 1.0)  # 8·w/2.45 = 3.27, 1.63, 1.09, …: ranks 2 and 3 tie at 1
    with pytest.raises(ValueError, match="at least 4"):
        planted_counts(100, 3, 1.0)


def test_fwe_counts_are_planted_exactly():
    total = TASK.fwe_haystack_length(160)
    counts = planted_counts(total, TASK.fwe_words, TASK.fwe_alpha)
    samples = TASK.fwe(10, length=160, seed=5)
    assert [np.array_equal(a.ids, b.ids) for a, b in zip(samples, TASK.fwe(10, length=160, seed=5))] == [True] * 10
    for s in samples:
        assert s.length == 160 and s.counts == counts and sum(counts) == total
        words = TASK.decode(s.ids)
        hay = words[s.haystack[0] : s.haystack[1]]
        assert s.haystack[1] - s.haystack[0] == total
        assert {w: hay.count(w) for w in s.words} == dict(zip(s.words, counts))
        assert len(hay) == sum(counts), "nothing but the planted words in the haystack"
        assert s.answer == s.words[:3] == words[s.answer_start : s.answer_start + 3]
        assert TASK.decode(s.word_ids) == s.words
        assert words[-1] == "<eos>"


def test_tokenizer_round_trip_and_vocabulary():
    tok = TASK.tokenizer()
    for s in TASK.passkey(2, length=128, keys=2, seed=0) + TASK.fwe(2, length=128, seed=0):
        assert tok(" ".join(TASK.decode(s.ids))).input_ids == s.ids.tolist()
    assert len(set(TASK.vocabulary)) == TASK.vocab_size
    assert TASK.vocabulary[TASK.pad_id] == "<pad>" and TASK.vocabulary[TASK.eos_id] == "<eos>"
    assert not set(TASK.coded_words) & set(TASK.adjectives + TASK.nouns)
    with pytest.raises(ValueError, match="one length"):
        TASK.encode(TASK.passkey(1, length=128, keys=1, seed=0) + TASK.passkey(1, length=160, keys=1, seed=0))


# --- measures -----------------------------------------------------------------------------------------------------


def _hand_sample(gold: int) -> RetrievalSample:
    """20 tokens: intro 0, haystack [1, 15), query [15, 20); key–value spans [3, 6), [8, 11), [12, 14)."""
    needles = (
        Needle(("a", "b"), ("1",), 1, 7, 3, 5, 6),
        Needle(("c", "d"), ("2",), 7, 12, 8, 10, 11),
        Needle(("e", "f"), ("3",), 12, 14, 12, 13, 14),
    )
    return RetrievalSample("passkey", np.arange(20), 18, ("2",), (1, 15), needles, gold)


def test_passkey_labels_by_hand():
    f, g, r, o, q = FIRST, GOLD, OTHER, FILL, QUERY
    # gold = the second needle: the first needle's span is "first", the third's "other"
    expected = [o, o, o, f, f, f, o, o, g, g, g, o, r, r, o, q, q, q, q, q]
    assert passkey_labels(_hand_sample(1)).tolist() == expected
    # gold = the first needle: no "first" span, the rest are "other"
    expected = [o, o, o, g, g, g, o, o, r, r, r, o, r, r, o, q, q, q, q, q]
    assert passkey_labels(_hand_sample(0)).tolist() == expected
    with pytest.raises(ValueError, match="passkey"):
        passkey_labels(TASK.fwe(1, length=128, seed=0)[0])


def test_answered_labels_by_hand():
    # gold = the second needle [8, 11); the answer spelt the third needle's value: its span [12, 14) is "answered"
    g, a, r = 0, 1, 2
    expected = [r] * 8 + [g, g, g] + [r] + [a, a] + [r] * 6
    assert answered_labels(_hand_sample(1), matched=2).tolist() == expected
    expected = [r] * 3 + [a, a, a] + [r, r] + [g, g, g] + [r] * 9
    assert answered_labels(_hand_sample(1), matched=0).tolist() == expected
    for bad in (1, 3, -1):  # the gold needle itself (a right answer), no such needle, no needle matched
        with pytest.raises(ValueError, match="matched"):
            answered_labels(_hand_sample(1), matched=bad)
    with pytest.raises(ValueError, match="passkey"):
        answered_labels(TASK.fwe(1, length=128, seed=0)[0], matched=0)


def test_answered_shares_keep_the_wrong_answers_that_read_a_needle():
    """Only wrong answers that spell a needle's value count; a row on the answered needle's span has all its mass
    there, per row and (per-layer methods) per layer."""
    from latim_captum.retrieval.evaluate import _answered_shares

    s = _hand_sample(1)
    outcomes = [passkey_outcome(s, [v]) for v in ("3", "2", "9", "1")]  # wrong → 3rd, right, no value, wrong → 1st
    scores = torch.zeros(4, 2, 20)  # 4 samples, 2 answer rows
    scores[:, :, 12:14] = 1.0  # the third needle
    scores[:, 1, 8] = 2.0  # second row: also the gold span, 2 of 4 of its mass
    got = _answered_shares(scores, [s] * 4, outcomes, per_layer=False)
    assert len(got) == 2
    # sample 0 (read the third needle): rows (0, 1, 0) and (0.5, 0.5, 0) → (0.25, 0.75, 0)
    assert got[0].tolist() == pytest.approx([0.25, 0.75, 0.0])
    # sample 3 (read the first needle, [3, 6), which holds nothing): the third needle's mass is "rest"
    assert got[1].tolist() == pytest.approx([0.25, 0.0, 0.75])
    # a wrong answer whose rows hold no mass is not counted (its shares are NaN, not evidence)
    assert len(_answered_shares(torch.zeros(4, 2, 20), [s] * 4, outcomes, per_layer=False)) == 0
    per_layer = _answered_shares(scores[:, :, None].expand(4, 2, 3, 20), [s] * 4, outcomes, per_layer=True)
    assert [p.shape for p in per_layer] == [(3, len(ANSWERED_CATEGORIES))] * 2
    assert per_layer[0][2].tolist() == pytest.approx([0.25, 0.75, 0.0])


def test_the_answered_section_pools_settings_by_samples():
    from latim_captum.retrieval.evaluate import _answered_section

    entry = {"label": "M", "passkey": {"N=64 k=2": {"answered": {"n": 1, "shares": [0.1, 0.9, 0.0]}},
                                       "N=64 k=4": {"answered": {"n": 3, "shares": [0.5, 0.3, 0.2]}}}}  # fmt: skip
    lines = _answered_section({"mamba1": {"methods": {"m": entry}}}, [64], [2, 4])
    # (1·0.1 + 3·0.5) / 4 = 0.4, (0.9 + 0.9) / 4 = 0.45, 0.6 / 4 = 0.15
    assert "| mamba1 | M | N=64 k>1 | 4 | 40.0 | 45.0 | 15.0 |" in lines
    empty = {"label": "M", "passkey": {"N=64 k=2": {"answered": {"n": 0, "shares": None}}}}
    assert _answered_section({"mamba1": {"methods": {"m": empty}}}, [64], [2]) == []


def test_span_shares_by_hand():
    labels = torch.tensor([3, 0, 0, 3, 1, 4])
    # |s| = 1, 2, 1, 0, 4, 2 (sum 10): gold 3, first 4, other 0, filler 1, query 2
    got = span_shares(torch.tensor([1.0, -2.0, 1.0, 0.0, 4.0, 2.0]), labels, 5)
    assert got.tolist() == pytest.approx([0.3, 0.4, 0.0, 0.1, 0.2])
    # a batch of rows and layers broadcasts one label row; a row with no mass has no shares
    scores = torch.zeros(2, 3, 6)
    scores[0, 1, 1] = 5.0
    out = span_shares(scores, labels[None, None], 5)
    assert out.shape == (2, 3, 5)
    assert out[0, 1].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert bool(torch.isnan(out[1, 0]).all())
    with pytest.raises(ValueError, match="labels"):
        span_shares(torch.ones(3), torch.tensor([0, 1, 5]), 5)


def test_an_oracle_row_on_the_gold_span_has_all_its_mass_there():
    s = TASK.passkey(1, length=192, keys=4, seed=2)[0]
    row = torch.zeros(s.length)
    start, stop = s.needles[s.gold].span
    row[start:stop] = torch.rand(stop - start) + 0.1
    shares = span_shares(row, passkey_labels(s), len(CATEGORIES))
    assert shares[GOLD].item() == pytest.approx(1.0) and float(shares[1:].sum()) == pytest.approx(0.0)


def test_fwe_labels_give_each_occurrence_its_word_rank():
    s = TASK.fwe(1, length=128, seed=1)[0]
    labels = fwe_labels(s)
    m = len(s.words)
    assert torch.bincount(labels, minlength=m + 1)[:m].tolist() == list(s.counts)
    for p in range(s.length):
        word = TASK.vocabulary[int(s.ids[p])]
        inside = s.haystack[0] <= p < s.haystack[1]
        assert labels[p].item() == (s.words.index(word) if inside else m)
    # a row with equal mass on every position: a word's share is its count over N, so per occurrence 1/N for all
    shares = span_shares(torch.ones(s.length), labels, m + 1)
    assert (shares[:m] / torch.tensor(s.counts)).tolist() == pytest.approx([1 / s.length] * m)


def test_outcomes_and_the_table4_split_by_hand():
    s = _hand_sample(1)  # values "1", "2", "3"; gold "2" is the second needle
    assert passkey_outcome(s, ["2"]) == {"correct": True, "gold_first": False, "matched": 1}
    assert passkey_outcome(s, ["1"]) == {"correct": False, "gold_first": False, "matched": 0}
    assert passkey_outcome(s, ["9"]) == {"correct": False, "gold_first": False, "matched": -1}
    outcomes = [
        {"correct": True, "gold_first": True, "matched": 0},
        {"correct": False, "gold_first": True, "matched": 2},
        {"correct": True, "gold_first": False, "matched": 1},
        {"correct": False, "gold_first": False, "matched": 0},
        {"correct": False, "gold_first": False, "matched": -1},
    ]
    got = summarize_passkey(outcomes)
    # 2 right of 5; first: 1 of 2; later: 1 of 3; wrong: one spells the first value, one another's, one none
    assert got["n"] == 5 and got["accuracy"] == pytest.approx(0.4)
    assert got["first"] == {"n": 2, "accuracy": 0.5} and got["later"]["accuracy"] == pytest.approx(1 / 3)
    assert got["wrong"] == {"n": 3, "first_value": 1, "other_value": 1, "no_value": 1}
    f = TASK.fwe(1, length=128, seed=0)[0]
    w = f.words
    assert fwe_outcome(f, w[:3]) == {"exact": True, "per_rank": [True, True, True], "set_recall": 1.0}
    assert fwe_outcome(f, (w[1], w[0], w[4])) == {"exact": False, "per_rank": [False, False, False],
                                                  "set_recall": pytest.approx(2 / 3)}  # fmt: skip


# --- single-query rows against the full maps ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_answer_rows_are_the_rows_of_the_full_maps(kind, monkeypatch):
    from conftest import build
    from latim_captum import alti_logit, interactions
    from latim_captum.baselines import mamba_attention
    from latim_captum.methods import _gradient_maps, next_token_targets
    from latim_captum.retrieval.attribution import answer_row_scores

    model = build(kind).eval()
    ids = torch.randint(0, 40, (2, 10), generator=torch.Generator().manual_seed(1))
    rows = [6, 8]
    nxt = next_token_targets(ids)
    targets = nxt[:, rows]
    l2 = answer_row_scores("l2_silu_gate", model, ids, rows=rows, targets=targets)
    full = interactions(model, ids, method="l2", activation="silu_gate")  # [B, L, N, N]
    torch.testing.assert_close(l2, full[:, :, rows].transpose(1, 2), atol=1e-5, rtol=1e-4)
    logit = answer_row_scores("alti_logit", model, ids, rows=rows, targets=targets)
    full = alti_logit(model, ids, activation="silu", target=nxt).scores
    torch.testing.assert_close(logit, full[:, rows], atol=1e-5, rtol=1e-4)
    # several rows take one full map; where the guard refuses it, one single-query row each, same values
    from latim_captum.maps.options import LatimMemoryError
    from latim_captum.retrieval import attribution

    def refused(*args, **kwargs):
        raise LatimMemoryError("no room for the full map")

    monkeypatch.setattr(attribution, "alti_logit", refused)
    one_by_one = answer_row_scores("alti_logit", model, ids, rows=rows, targets=targets)
    torch.testing.assert_close(one_by_one, logit, atol=1e-5, rtol=1e-4)
    sal = answer_row_scores("saliency", model, ids, rows=rows, targets=targets)
    torch.testing.assert_close(sal, _gradient_maps(model, ids, "saliency")[:, rows], atol=1e-5, rtol=1e-4)
    att = answer_row_scores("mamba_attention", model, ids, rows=rows, targets=targets)
    torch.testing.assert_close(att, mamba_attention(model, ids)[:, :, rows].transpose(1, 2), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown method"):
        answer_row_scores("l3", model, ids, rows=rows, targets=targets)
    with pytest.raises(ValueError, match="targets"):
        answer_row_scores("l2", model, ids, rows=rows, targets=targets[:, :1])


# --- training -----------------------------------------------------------------------------------------------------


def test_curriculum_and_batches_depend_on_seed_step_and_length_only():
    from latim_captum.retrieval.train import curriculum_length, draw_batch

    stages = [[0.1, [128]], [0.5, [256]], [1.0, [1024, 2048]]]
    assert [curriculum_length(stages, p, 0) for p in (0.0, 0.099, 0.1, 0.49, 0.5, 7.0)] == [128, 128, 256, 256,
                                                                                           1024, 1024]  # fmt: skip
    assert [curriculum_length(stages, 0.9, s) for s in range(3)] == [1024, 2048, 1024]
    kw = dict(length=128, batch=6, keys=[1, 2, 4], key_weights=[2, 1, 1], fwe_share=0.5)
    a = draw_batch(TASK, seed=[0, 0, 5], **kw)
    b = draw_batch(TASK, seed=[0, 0, 5], **kw)
    assert all(np.array_equal(x.ids, y.ids) for x, y in zip(a, b))
    assert not all(np.array_equal(x.ids, y.ids) for x, y in zip(a, draw_batch(TASK, seed=[0, 0, 6], **kw)))
    assert {s.kind for s in draw_batch(TASK, seed=[1], **{**kw, "fwe_share": 0.0, "batch": 20})} == {"passkey"}
    assert {s.kind for s in draw_batch(TASK, seed=[1], **{**kw, "fwe_share": 1.0})} == {"fwe"}


def test_answer_loss_reads_only_the_answer_rows():
    from latim_captum.retrieval.train import answer_loss, answer_mask

    samples = TASK.passkey(2, length=128, keys=2, seed=0) + TASK.fwe(1, length=128, seed=0)
    ids = TASK.encode(samples)
    mask = answer_mask(samples, ids.shape[1])
    logits = torch.full((3, 128, TASK.vocab_size), -10.0)
    for k in range(3):
        for i in range(127):  # right on the answer and <eos> rows, confidently wrong on every other row
            logits[k, i, ids[k, i + 1] if mask[k, i] else TASK.unk_id] = 10.0
    loss, ok, m = answer_loss(logits, ids, mask)
    assert bool(ok.all()) and float(loss.max()) < 1e-6
    # passkey: 2 digits + <eos>; FWE: 3 words + <eos>
    assert m.sum(-1).tolist() == [3, 3, 4]


def _train_argv(out, *extra):
    return ["--variant", "mamba2", "--out", str(out), "--steps", "2", "--n-eval", "1", "--tokens-per-batch", "192",
            "--lengths", "96", "--layers", "1", "--d-model", "16", "--head-dim", "8", "--state", "4",
            "--eval-every", "2", "--warmup", "2", "--train-keys", "1", "2", "--key-weights", "1", "1", "--quiet",
            *extra]  # fmt: skip


def test_train_two_steps_then_resume(tmp_path):
    from latim_captum.retrieval.train import main

    out = tmp_path / "m"
    assert main(_train_argv(out)) == 0
    meta = json.loads((out / "metrics.json").read_text())
    assert meta["steps"] == 2 and meta["task_name"] == "retrieval" and meta["steps_per_length"] == {"96": 2}
    assert {"eval_exact_k1", "eval_exact_k2", "eval_exact_k4", "eval_exact_fwe"} <= set(meta)
    assert (out / "trainer_state.pt").is_file() and (out / "tokenizer.json").is_file()
    again = tmp_path / "m2"
    assert main(["--variant", "mamba2", "--resume", str(out), "--out", str(again), "--steps", "3", "--quiet"]) == 0
    resumed = json.loads((again / "metrics.json").read_text())
    assert resumed["steps"] == 3 and resumed["resumed_from"] == str(out)
    assert [h["step"] for h in resumed["history"]] == [2, 3]
    assert resumed["tokens_per_batch"] == 192, "a resumed run keeps the saved run's settings"
    assert main(["--variant", "mamba1", "--resume", str(out), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    # --steps may change on a resume; a recipe option with another value is refused, not dropped
    with pytest.raises(SystemExit, match=r"drop --fwe-share 0\.5 \(the run's: 0\.25\)"):
        main(["--variant", "mamba2", "--resume", str(out), "--out", str(tmp_path / "z"), "--fwe-share", "0.5"])


# --- the bench end to end and the figures -------------------------------------------------------------------------


def test_bench_retrieval_end_to_end(tmp_path, monkeypatch):
    from collections import Counter

    from latim_captum.cli import main
    from latim_captum.retrieval import evaluate
    from latim_captum.retrieval.train import main as train_main

    calls, real = Counter(), evaluate.answer_row_scores

    def counted(name, *args, **kwargs):
        calls[name] += 1
        return real(name, *args, **kwargs)

    monkeypatch.setattr(evaluate, "answer_row_scores", counted)

    model = tmp_path / "m"
    assert train_main(_train_argv(model)) == 0
    out = tmp_path / "out"
    argv = ["bench", "retrieval", "--model", str(model), "--lengths", "96", "--keys", "1", "2", "--n-samples", "4",
            "--n-attr", "2", "--methods", "l2", "alti_logit_silu_gate", "saliency", "mamba_attention", "--out",
            str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "retrieval-mamba2-tiny.json").read_text())
    r = report["models"]["mamba2"]
    assert set(r["passkey"]) == {"N=96 k=1", "N=96 k=2"} and set(r["fwe"]) == {"N=96"}
    for name in ("l2", "alti_logit_silu_gate", "saliency", "mamba_attention"):
        entry = r["methods"][name]
        assert entry["rows"] == 2 * 2 + 2 * 2 + 2 * 3  # 2 samples × (2 digits, 2 digits, 3 words)
        shares = entry["passkey"]["N=96 k=2"]["cells"]["all"]["shares"]
        per_layer = np.array(shares)
        assert per_layer.shape == ((1, 5) if entry["per_layer"] else (5,))
        assert per_layer.sum(-1) == pytest.approx(1.0)
        assert np.array(entry["fwe"]["N=96"]["shares"]).sum(-1) == pytest.approx(1.0)
        answered = entry["passkey"]["N=96 k=2"]["answered"]  # wrong answers of the 2 explained that read a needle
        assert answered["n"] <= 2 and (answered["shares"] is None) == (answered["n"] == 0)
        # one untimed call on one sample, then one timed call per setting (2 samples fit one attribution batch)
        assert calls[name] == 1 + 3 and entry["warmup_seconds"] > 0
    md = (out / "retrieval-mamba2-tiny.md").read_text()
    assert "follows one untimed call on one sample" in md
    assert "Table 4" in md and "Table 6" in md and "trained from scratch" in md and "74.3" in md
    # two training steps retrieve nothing: the report says so above its attribution tables
    assert r["passkey"]["N=96 k=1"]["accuracy"] < 0.1 and "**mamba2 does not retrieve**" in md
    from latim_captum.retrieval.evaluate import render_markdown

    r["passkey"]["N=96 k=1"]["accuracy"] = 0.5
    assert "does not retrieve" not in render_markdown(report)
    for suffix in ("shares", "fwe", "long"):
        assert (out / f"retrieval-mamba2-tiny-{suffix}.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["bench", "retrieval"], "give --variant"),
        (["bench", "retrieval", "--model", "/nonexistent/x"], "no trained model"),
        (["bench", "retrieval", "--variant", "mamba2", "--scale", "paper"], "gpu-models/retrieval-mamba2-paper-s0"),
        (["bench", "retrieval", "--variant", "mamba2", "--scale", "paper", "--seed", "2"], "paper-s2"),
        (["bench", "retrieval", "--variant", "mamba2", "--scale", "paper", "--train-steps", "5"], "tiny scale only"),
        (["bench", "retrieval", "--model", "/nonexistent/x", "--train-steps", "5"], "--model gives the models"),
    ],
)
def test_bench_retrieval_errors_are_one_line(argv, fragment, capsys, tmp_path, monkeypatch):
    from latim_captum.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]


def test_long_context_view_and_span_bars():
    from latim_captum.viz import plot_long_context, plot_span_shares, span_mass

    # |s| = 1, 3, 0, 4 (sum 8): span a holds 3, span b 4, the rest 1
    assert span_mass(torch.tensor([1.0, -3.0, 0.0, 4.0]), [("a", 1, 2), ("b", 3, 4)]) == {
        "a": 0.375, "b": 0.5, "rest": 0.125
    }  # fmt: skip
    # overlapping spans: the shared position counts once, in the first span
    assert span_mass(torch.ones(4), [("a", 0, 2), ("b", 1, 3)]) == {"a": 0.5, "b": 0.25, "rest": 0.25}
    row = torch.zeros(2048)
    row[100:104] = 1.0
    row[1500] = -2.0
    spans = [("gold", 100, 104), ("first", 1500, 1501), ("query", 2000, 2040)]
    fig = plot_long_context({"ℓ2": row, "IG": row.flip(0)}, spans, [f"t{i}" for i in range(2048)], context=2)
    titles = [a.get_title() for a in fig.axes]
    assert "gold [100, 104)" in titles and "query [2000, 2040)" in titles
    zoom = next(a for a in fig.axes if a.get_title() == "gold [100, 104)")
    assert [t.get_text() for t in zoom.get_xticklabels()] == [f"t{i}" for i in range(98, 106)]
    fig.savefig(__import__("io").BytesIO(), format="png")
    fig = plot_span_shares({"ℓ2": {"gold": 0.7, "filler": 0.3}, "IG": {"gold": 0.1, "query": 0.9}})
    assert len(fig.axes[0].patches) == 2 * 3  # two methods × the union of three categories
    with pytest.raises(ValueError, match="different lengths"):
        plot_long_context({"a": torch.ones(5), "b": torch.ones(6)}, [("x", 0, 1)])
    with pytest.raises(ValueError, match="outside"):
        span_mass(torch.ones(5), [("x", 3, 9)])
