"""Synthetic translation task (the paper's Table 3 analogue): grammar, gold links, encoding, AER and its extraction.

The AER cases are computed by hand in the comments; the grammar is checked through invariants that hold for every
pair (each rule of :mod:`latim_captum.alignment.grammar` leaves a trace in the links), not against a stored run."""

from __future__ import annotations

import random

import pytest
import torch

from latim_captum.alignment.data import TINY_TASK, AlignmentTask
from latim_captum.alignment.grammar import (
    CONTENT_CLASSES,
    OBJECT_MARKER,
    SOURCE_FUNCTION_WORDS,
    TARGET_FUNCTION_WORDS,
    build_lexicon,
    sample_pair,
)
from latim_captum.alignment.metrics import (
    alignment_error_rate,
    batch_alignments,
    extract_alignment,
    monotone_alignment,
    target_rows,
    target_source_block,
)

SIZES = dict(n_nouns=30, n_adjectives=10, n_transitive=10, n_intransitive=8, n_adverbs=5)


# --- lexicon and grammar ------------------------------------------------------------------------------------------


def test_lexicon_is_seeded_and_the_languages_share_no_word():
    a, b = build_lexicon(**SIZES, seed=3), build_lexicon(**SIZES, seed=3)
    assert a == b and a.translations == b.translations
    assert build_lexicon(**SIZES, seed=4).words != a.words
    src, tgt = a.source_vocabulary, a.target_vocabulary
    assert len(src) == len(set(src)) and len(tgt) == len(set(tgt))
    assert not set(src) & set(tgt), "a word of both languages would let the model copy instead of translate"
    assert len(src) == sum(SIZES.values()) + sum(len(v) for v in SOURCE_FUNCTION_WORDS.values())
    for cls, n in zip(CONTENT_CLASSES, SIZES.values()):
        fertile = [w for w in a.words[cls] if len(a.translations[w]) == 2]
        # round(0.2 · n) two-word translations for nouns and verbs, none for adjectives and adverbs
        assert len(fertile) == (round(0.2 * n) if cls in ("noun", "transitive", "intransitive") else 0), cls
        assert all(len(a.translations[w]) in (1, 2) for w in a.words[cls])
    assert all(a.translations[w] == () for w in SOURCE_FUNCTION_WORDS["det"]), "articles are dropped"
    assert OBJECT_MARKER in tgt


def test_bad_lexicon_and_task_arguments():
    with pytest.raises(ValueError, match="at least one noun"):
        build_lexicon(**{**SIZES, "n_nouns": 0})
    with pytest.raises(ValueError, match="fertility"):
        build_lexicon(**SIZES, fertility=1.5)
    with pytest.raises(ValueError, match="min_words"):
        AlignmentTask(**{**TINY_TASK, "min_words": 8, "max_words": 6})
    with pytest.raises(ValueError, match="positive int"):
        AlignmentTask(**TINY_TASK).pairs(0, seed=0)


def _classes(lex):
    return {w: cls for cls, words in lex.words.items() for w in words}


def _check_rules(pair, lex):
    """Every rule of the grammar, read back from one pair's links."""
    cls = _classes(lex)
    src_cls = [cls[w] for w in pair.source]
    assert pair.sure <= pair.possible
    assert all(0 <= s < len(pair.source) and 0 <= t < len(pair.target) for s, t in pair.possible)
    # every target word is accounted for: a link of its own, possible at least
    assert {t for _, t in pair.possible} == set(range(len(pair.target)))
    by_source = {s: sorted(t for s2, t in pair.sure if s2 == s) for s in range(len(pair.source))}
    for s, c in enumerate(src_cls):
        if c in CONTENT_CLASSES:
            # lexical translation: sure links to exactly its one or two target words, adjacent, in lexicon order
            assert [pair.target[t] for t in by_source[s]] == list(lex.translations[pair.source[s]])
            assert by_source[s] == list(range(by_source[s][0], by_source[s][0] + len(by_source[s])))
        else:
            assert by_source[s] == [], f"function word {pair.source[s]!r} ({c}) has a sure link"
        if c == "det":
            # a dropped article: possible links to the words of its noun, the next noun in the source
            noun = next(k for k in range(s + 1, len(pair.source)) if src_cls[k] == "noun")
            assert {t for s2, t in pair.possible if s2 == s} == set(by_source[noun])
        if c in TARGET_FUNCTION_WORDS:
            linked = [t for s2, t in pair.possible if s2 == s]
            k = SOURCE_FUNCTION_WORDS[c].index(pair.source[s])
            assert len(linked) == 1 and pair.target[linked[0]] == TARGET_FUNCTION_WORDS[c][k]
    for t, word in enumerate(pair.target):
        if word == OBJECT_MARKER:
            (s,) = [s for s, t2 in pair.possible if t2 == t]
            assert src_cls[s] == "noun" and pair.target[t - 1] in lex.translations[pair.source[s]] + tuple(
                w for a in pair.source for w in lex.translations[a] if cls[a] == "adjective"
            )
    # adjective–noun swap, mirror order: "A1 A2 N" → "N' A2' A1'"
    for s, c in enumerate(src_cls):
        if c == "noun":
            k = s - 1
            adjectives = []
            while k >= 0 and src_cls[k] == "adjective":
                adjectives.append(k)
                k -= 1
            order = by_source[s] + [t for a in adjectives for t in by_source[a]]  # noun, then A_last .. A_first
            assert order == list(range(order[0], order[0] + len(order))), (pair, s)
    # verb-final after a subordinator: the clause's verb is the sentence's last target word
    if "sub" in src_cls:
        k = src_cls.index("sub")
        verbs = [s for s in range(k + 1, len(pair.source)) if src_cls[s] in ("transitive", "intransitive")]
        assert len(verbs) == 1 and by_source[verbs[0]][-1] == len(pair.target) - 1
    # main clause keeps SVO: the first verb's words come right after the subject noun phrase's
    first_verb = next(s for s, c in enumerate(src_cls) if c in ("transitive", "intransitive"))
    subject_words = sum(len(by_source[s]) for s in range(first_verb))
    assert by_source[first_verb][0] == subject_words


def test_every_pair_follows_the_rules():
    lex = build_lexicon(**SIZES, seed=0)
    rng = random.Random(0)
    seen = {"fertile": 0, "sub": 0, "conj": 0, "det": 0, "adj2": 0, "marker": 0}
    cls = _classes(lex)
    for _ in range(400):
        pair = sample_pair(lex, rng, min_words=5, max_words=20)
        assert 5 <= len(pair.source) <= 20
        _check_rules(pair, lex)
        kinds = [cls[w] for w in pair.source]
        seen["fertile"] += any(len(lex.translations[w]) == 2 for w in pair.source)
        seen["sub"] += "sub" in kinds
        seen["conj"] += "conj" in kinds
        seen["det"] += "det" in kinds
        seen["adj2"] += any(a == b == "adjective" for a, b in zip(kinds, kinds[1:]))
        seen["marker"] += OBJECT_MARKER in pair.target
    assert min(seen.values()) >= 20, f"some rule is (almost) never exercised: {seen}"


def test_the_check_of_the_rules_can_fail():
    """The invariants above catch a pair whose target breaks a rule (here: adjective before noun)."""
    lex = build_lexicon(**SIZES, seed=0)
    rng = random.Random(1)
    cls = _classes(lex)
    while True:
        pair = sample_pair(lex, rng, min_words=5, max_words=12)
        adjectives = [s for s, w in enumerate(pair.source) if cls[w] == "adjective"]
        if adjectives and all(len(lex.translations[w]) == 1 for w in pair.source):
            break
    s_adj = adjectives[0]
    (t_adj,) = [t for s, t in pair.sure if s == s_adj]
    # move the adjective's word to the front, re-pointing every link
    perm = [t_adj] + [t for t in range(len(pair.target)) if t != t_adj]
    new_t = {old: new for new, old in enumerate(perm)}
    broken = type(pair)(
        pair.source,
        tuple(pair.target[t] for t in perm),
        frozenset((s, new_t[t]) for s, t in pair.sure),
        frozenset((s, new_t[t]) for s, t in pair.possible),
    )
    with pytest.raises(AssertionError):
        _check_rules(broken, lex)


# --- encoding -----------------------------------------------------------------------------------------------------


def test_encoding_layout_padding_and_tokenizer():
    task = AlignmentTask(**TINY_TASK)
    assert task.vocabulary[:4] == ("<pad>", "<sep>", "<eos>", "<unk>")
    assert (task.pad_id, task.sep_id, task.eos_id) == (0, 1, 2)
    pairs = task.pairs(6, seed=5)
    assert pairs == task.pairs(6, seed=5) and pairs != task.pairs(6, seed=6)
    train, held_out = task.splits(6, 6, seed=5)
    assert train == pairs and held_out == task.pairs(6, seed=6)
    batch = task.encode(pairs)
    tok = task.tokenizer()
    width = max(len(p.source) + len(p.target) + 2 for p in pairs)
    assert batch.ids.shape == (6, width) and width <= task.max_seq_len
    mask = batch.loss_mask()
    for k, p in enumerate(pairs):
        s, t = len(p.source), len(p.target)
        row = batch.ids[k]
        assert row[s] == task.sep_id and row[s + t + 1] == task.eos_id and (row[s + t + 2 :] == task.pad_id).all()
        assert [task.vocabulary[i] for i in row[:s]] == list(p.source)
        assert [task.vocabulary[i] for i in row[s + 1 : s + t + 1]] == list(p.target)
        assert tok(task.text(p)).input_ids == row[: s + t + 2].tolist()
        # trained rows: S..S+T, the rows whose next token is a target word or <eos>
        assert mask[k].nonzero().flatten().tolist() == list(range(s, s + t + 1))
    part = batch.select([1, 3])
    assert part.ids.shape[1] == int(part.lengths.max()) and part.pairs == (pairs[1], pairs[3])
    assert torch.equal(part.ids, batch.ids[[1, 3], : part.ids.shape[1]])


# --- AER ----------------------------------------------------------------------------------------------------------


def test_aer_hand_values():
    sure = {(0, 0), (1, 2)}
    possible = sure | {(2, 1)}
    # A = {(0,0), (2,1), (1,1)}: |A∩S| = 1, |A∩P| = 2, |A| = 3, |S| = 2 → AER = 1 − 3/5
    got = alignment_error_rate([{(0, 0), (2, 1), (1, 1)}], [sure], [possible])
    assert got == pytest.approx({"aer": 0.4, "precision": 2 / 3, "recall": 0.5})
    assert alignment_error_rate([sure], [sure], [possible])["aer"] == 0.0
    # the possible-only link may be predicted or left out at no cost
    assert alignment_error_rate([sure | {(2, 1)}], [sure], [possible])["aer"] == 0.0
    # nothing predicted: AER 1, precision undefined
    assert alignment_error_rate([set()], [sure], [possible]) == {"aer": 1.0, "precision": None, "recall": 0.0}


def test_aer_pools_counts_over_the_corpus():
    # sentence 1: A = S = {(0,0)}; sentence 2: S = {(0,0),(1,1),(2,2)}, A = {(1,0)} (wrong)
    # pooled: |A| = 2, |S| = 4, |A∩S| = |A∩P| = 1 → AER = 1 − 2/6 (the mean of the two sentences' AER would be 0.5)
    got = alignment_error_rate(
        [{(0, 0)}, {(1, 0)}], [{(0, 0)}, {(0, 0), (1, 1), (2, 2)}], [{(0, 0)}, {(0, 0), (1, 1), (2, 2)}]
    )
    assert got == pytest.approx({"aer": 2 / 3, "precision": 0.5, "recall": 0.25})
    with pytest.raises(ValueError, match="S ⊆ P"):
        alignment_error_rate([set()], [{(0, 0)}], [{(1, 1)}])
    with pytest.raises(ValueError, match="sure link"):
        alignment_error_rate([set()], [set()], [set()])


def test_aer_of_a_dropped_article_and_a_one_to_two_word():
    # "ta N" → "N'": target 0 is sure to the noun (source 1), possible to the dropped article (source 0)
    sure, possible = {(1, 0)}, {(1, 0), (0, 0)}
    assert alignment_error_rate([{(1, 0)}], [sure], [possible])["aer"] == 0.0
    # linked to the article: |A∩S| = 0, |A∩P| = 1, |A| = 1, |S| = 1 → 1 − 1/2
    assert alignment_error_rate([{(0, 0)}], [sure], [possible])["aer"] == 0.5
    # one source word, two target words (fertility): both links sure
    sure2 = {(0, 0), (0, 1)}
    assert alignment_error_rate([sure2], [sure2], [sure2])["aer"] == 0.0
    # only the first of them found: |A∩S| = |A∩P| = 1, |A| = 1, |S| = 2 → 1 − 2/3
    assert alignment_error_rate([{(0, 0)}], [sure2], [sure2])["aer"] == pytest.approx(1 / 3)


def test_extraction_ties_and_the_sep_sink():
    block = torch.tensor(
        [
            [0.1, 0.7, 0.2],  # → source 1
            [0.5, 0.5, 0.0],  # tie: first → source 0; all → 0 and 1
            [0.1, 0.0, 0.9],  # argmax on <sep> (last column): no link
            [0.9, 0.2, 0.9],  # tie between source 0 and <sep>: the source word (lower index) wins
        ]
    )
    assert extract_alignment(block) == {(1, 0), (0, 1), (0, 3)}
    assert extract_alignment(block, ties="all") == {(1, 0), (0, 1), (1, 1), (0, 3)}
    # without the sink the last column is a source word like any other
    assert extract_alignment(block, sink=False) == {(1, 0), (0, 1), (2, 2), (0, 3)}
    with pytest.raises(ValueError, match="NaN"):
        extract_alignment(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="ties"):
        extract_alignment(block, ties="random")
    with pytest.raises(ValueError, match="no source column"):
        extract_alignment(torch.ones(2, 1))


def test_predict_and_hold_rows_of_a_decoder_only_map():
    # S = 3 source words, T = 2 target words: positions src 0-2, <sep> 3, target 4-5, <eos> 6
    assert list(target_rows(3, 2, "predict")) == [3, 4] and list(target_rows(3, 2, "hold")) == [4, 5]
    with pytest.raises(ValueError, match="rows"):
        target_rows(3, 2, "input")
    maps = torch.zeros(7, 7)
    maps[3, 2] = 1.0  # the <sep> row predicts target 0: source 2
    maps[4, 0] = 1.0  # the row of target 0 predicts target 1 (and holds target 0): source 0
    maps[5, 1] = 1.0  # the row of target 1 holds it: source 1
    maps[4, 4] = maps[5, 5] = 5.0  # own-token columns are never candidates
    maps[3, 3] = 5.0  # nor the <sep> row's own column, which in "predict" is target word 0's sink cell
    block = target_source_block(maps, 3, 2, rows="predict", sink=False)
    assert torch.equal(block, maps[3:5, :3])
    assert target_source_block(maps, 3, 2, rows="hold").shape == (2, 4)  # + the <sep> column
    assert extract_alignment(target_source_block(maps, 3, 2, rows="predict")) == {(2, 0), (0, 1)}
    assert extract_alignment(target_source_block(maps, 3, 2, rows="hold")) == {(0, 0), (1, 1)}
    with pytest.raises(ValueError, match="does not hold"):
        target_source_block(maps[:6, :6], 3, 2)


def _oracle_maps(batch, rows: str) -> torch.Tensor:
    """Maps that score each target word's gold link 1 at the row of ``rows``, 0 elsewhere (a word with only
    possible links scores one of them, or the <sep> sink when it has none)."""
    maps = torch.zeros(batch.ids.shape[0], batch.ids.shape[1], batch.ids.shape[1])
    for k, pair in enumerate(batch.pairs):
        s_len, t_len = int(batch.source_lengths[k]), int(batch.target_lengths[k])
        r = target_rows(s_len, t_len, rows)
        for t in range(t_len):
            sure = sorted(s for s, t2 in pair.sure if t2 == t)
            possible = sorted(s for s, t2 in pair.possible if t2 == t)
            col = (sure or possible or [s_len])[0]
            maps[k, r[t], col] = 1.0
    return maps


@pytest.mark.parametrize("rows", ["predict", "hold"])
def test_a_map_holding_the_gold_links_scores_aer_zero_in_its_reading_only(rows):
    task = AlignmentTask(**TINY_TASK)
    batch = task.encode(task.pairs(40, seed=2))
    maps = _oracle_maps(batch, rows)
    sure = [p.sure for p in batch.pairs]
    possible = [p.possible for p in batch.pairs]
    # fertile words' second target words point at the same source word: the map has one gold link per row, and
    # the extracted alignment has every sure link
    found = batch_alignments(maps, batch, rows=rows)
    assert alignment_error_rate(found, sure, possible)["aer"] == 0.0
    other = "hold" if rows == "predict" else "predict"
    assert alignment_error_rate(batch_alignments(maps, batch, rows=other), sure, possible)["aer"] > 0.3
    with pytest.raises(ValueError, match="expected"):
        batch_alignments(maps[:3], batch)


def test_monotone_baseline_hand_values():
    assert monotone_alignment(4, 2) == {(1, 0), (3, 1)}
    # S = 2, T = 4: centres 0.25, 0.75, 1.25, 1.75 (in source words) → 0, 0, 1, 1
    assert monotone_alignment(2, 4) == {(0, 0), (0, 1), (1, 2), (1, 3)}
    assert monotone_alignment(3, 3) == {(0, 0), (1, 1), (2, 2)}


# --- training -----------------------------------------------------------------------------------------------------


def _train_args(out, *extra):
    return ["--variant", "mamba2", "--out", str(out), "--steps", "3", "--n-train", "24", "--n-eval", "6", "--batch",
            "4", "--layers", "1", "--d-model", "16", "--head-dim", "8", "--state", "4", "--eval-every", "2",
            "--warmup", "2", "--quiet", *extra]  # fmt: skip


def test_target_loss_reads_only_the_target_rows():
    from latim_captum.alignment.train import target_loss

    task = AlignmentTask(**TINY_TASK)
    batch = task.encode(task.pairs(3, seed=0))
    n, width = batch.ids.shape
    logits = torch.full((n, width, task.vocab_size), -10.0)
    # right everywhere the next token is a target word or <eos>, wrong (but confident) on every other row
    for k in range(n):
        for i in range(width - 1):
            logits[k, i, batch.ids[k, i + 1] if batch.loss_mask()[k, i] else task.unk_id] = 10.0
    loss, ok, mask = target_loss(logits, batch)
    assert bool(ok.all()) and float(loss.max()) < 1e-6
    assert int(mask.sum()) == int((batch.target_lengths + 1).sum())


def test_train_smoke_writes_a_run_folder(tmp_path):
    import json

    from latim_captum.alignment.train import main

    out = tmp_path / "m"
    assert main(_train_args(out, "--act", "relu")) == 0
    for name in ("model.safetensors", "config.json", "tokenizer.json", "metrics.json", "training_args.json"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "metrics.json").read_text())
    assert meta["steps"] == 3 and meta["act"] == "relu" and meta["task"] == AlignmentTask(**TINY_TASK).to_dict()
    assert [h["step"] for h in meta["history"]] == [2, 3]
    assert 0.0 <= meta["eval_token_acc"] <= 1.0 and 0.0 <= meta["eval_exact_match"] <= meta["eval_token_acc"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    task = AlignmentTask(**TINY_TASK)
    pair = task.pairs(1, seed=9)[0]
    assert tok(task.text(pair)).input_ids == task.encode([pair]).ids[0].tolist()


def test_train_errors_are_one_line(tmp_path, capsys):
    from latim_captum.alignment.train import main

    assert main(_train_args(tmp_path / "x", "--head-dim", "7")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("train: error:") and "head_dim" in err and len(err.splitlines()) == 1


def test_evaluation_counts_a_sample_right_only_when_every_target_token_is():
    from latim_captum.alignment.train import evaluate_translation

    task = AlignmentTask(**TINY_TASK)
    batch = task.encode(task.pairs(4, seed=3))

    class Oracle(torch.nn.Module):
        """Predicts the gold next token on the target rows of samples 0 and 2; sample 1 gets one target word wrong,
        sample 3 its <eos>."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids):
            n, width = input_ids.shape
            logits = torch.zeros(n, width, task.vocab_size)
            nxt = torch.cat([input_ids[:, 1:], input_ids[:, -1:]], 1)
            logits.scatter_(2, nxt[..., None], 1.0)
            for row, ids in enumerate(input_ids):  # which sample of the batch (they arrive in chunks)
                k = next(k for k in range(len(batch)) if torch.equal(batch.ids[k, :width], ids))
                s, t = int(batch.source_lengths[k]), int(batch.target_lengths[k])
                wrong = {1: s + 1, 3: s + t}.get(k)  # the row predicting target word 1, or <eos>
                if wrong is not None:
                    logits[row, wrong] = 0.0
                    logits[row, wrong, task.unk_id] = 1.0
            return type("Out", (), {"logits": logits})()

    got = evaluate_translation(Oracle(), batch, batch_size=3)
    tokens = int((batch.target_lengths + 1).sum())
    assert got["exact_match"] == 0.5 and got["token_acc"] == pytest.approx((tokens - 2) / tokens)


# --- evaluation and the benchmark ---------------------------------------------------------------------------------


def _tiny_model(variant: str = "mamba2"):
    from latim_captum.tasks.models import build_model

    task = AlignmentTask(**TINY_TASK)
    kw = dict(head_dim=8) if variant == "mamba2" else {}
    torch.manual_seed(0)
    model = build_model(variant, layers=2, d_model=16, state=4, vocab=task.vocab_size, seq_len=task.max_seq_len,
                        special_id=task.pad_id, **kw)  # fmt: skip
    return model.eval(), task


@pytest.mark.parametrize("name", ["l2", "alti_logit", "saliency", "mamba_attention"])
def test_right_padding_changes_no_real_row_of_any_map(name):
    """The evaluation batches pairs of different lengths, right-padded: every map is causal, so the rows and columns
    of a sample's own tokens are the same as without padding, except the ``<eos>`` row of a method that explains
    the next token (its target is ``<pad>`` in the batch, ``<eos>`` itself alone); no reading scores that row."""
    from latim_captum.methods import get_method

    model, task = _tiny_model()
    batch = task.encode(task.pairs(3, seed=4))
    method = get_method(name)
    padded = method(model, batch.ids, max_sequences=64)
    for k in range(3):
        n = int(batch.lengths[k])
        rows = n - 1 if method.spec.uses_target else n
        alone = method(model, batch.ids[k : k + 1, :n], max_sequences=64)
        assert torch.allclose(padded[k : k + 1, ..., :rows, :n], alone[..., :rows, :], atol=1e-5), name
        assert max(target_rows(n - 2 - len(batch.pairs[k].target), len(batch.pairs[k].target), "hold")) == n - 2


def test_evaluation_scores_an_oracle_method_zero_in_its_reading(monkeypatch):
    """The wiring of ``evaluate_model`` (pairs, chunks, padding, readings, layers) with a method that returns the
    gold links: AER 0 in the reading it was built for, per layer and aggregated."""
    from latim_captum.alignment import evaluate as ev

    model, task = _tiny_model()
    n = 10
    pairs = task.pairs(n, seed=5 + 1)  # what evaluate_model draws for seed 5
    data = task.encode(pairs)

    class Oracle:
        label, family = "oracle", "test"

        def __init__(self, per_layer):
            self.per_layer = per_layer

        def __call__(self, model, ids, max_sequences, backend):
            rows = [next(k for k in range(n) if torch.equal(data.ids[k, : ids.shape[1]], r)) for r in ids]
            part = data.select(rows)
            maps = _oracle_maps(part, "predict")
            return torch.stack([torch.zeros_like(maps), maps], 1) if self.per_layer else maps

    monkeypatch.setattr(ev, "resolve_method", lambda name: Oracle(name == "layered"))
    report = ev.evaluate_model(
        model, task, n_samples=n, seed=5, methods=["layered", "aggregated"], batch=4, quiet=True
    )
    layered, aggregated = report["methods"]["layered"], report["methods"]["aggregated"]
    assert layered["readings"]["predict"]["layers"][1]["aer"] == 0.0
    assert layered["readings"]["predict"]["layers"][0]["aer"] > 0.5  # all-zero maps: every argmax on source 0
    assert aggregated["readings"]["predict"]["all"] == {"aer": 0.0, "precision": 1.0, "recall": 1.0}
    assert aggregated["readings"]["hold"]["all"]["aer"] > 0.3
    sure = sum(len(p.sure) for p in pairs)
    assert report["gold"]["sure_links"] == sure and report["gold"]["target_words"] == sum(len(p.target) for p in pairs)
    assert 0.0 < report["baselines"]["monotone"]["aer"] < 1.0
    md = ev.render_markdown({"meta": {}, "models": {"mamba2": report}})
    assert "| oracle | 0.00 | " in md and "| oracle | 0.00 (L2) | " in md


def test_bench_alignment_trains_a_tiny_model_and_writes_table3(tmp_path):
    import json

    from latim_captum.cli import main

    argv = ["bench", "alignment", "--variant", "mamba2", "--train-steps", "2", "--train-out", str(tmp_path / "runs"),
            "--n-samples", "4", "--methods", "l2", "alti_logit", "--out", str(tmp_path), "--quiet",
            "--seed", "3"]  # fmt: skip
    assert main(argv) == 0
    assert (tmp_path / "runs" / "alignment-mamba2-tiny" / "config.json").is_file()
    suite = json.loads((tmp_path / "alignment-mamba2-tiny.json").read_text())
    report = suite["models"]["mamba2"]
    assert report["meta"]["steps"] == 2 and report["meta"]["seed"] == 3
    # the recorded command reruns this run: the training seed and steps included
    assert suite["meta"]["command"] == (
        "latim bench alignment --scale tiny --device cpu --variant mamba2 --n-samples 4 --methods l2 alti_logit "
        "--seed 3 --train-steps 2"
    )
    assert set(report["methods"]["l2"]["readings"]) == {"predict", "hold"}
    assert len(report["methods"]["l2"]["readings"]["hold"]["layers"]) == report["n_layers"] == 2
    for reading in report["methods"]["alti_logit"]["readings"].values():
        assert 0.0 <= reading["all"]["aer"] <= 1.0
    md = (tmp_path / "alignment-mamba2-tiny.md").read_text()
    assert "0.47 / 0.49 / 0.43 / 0.49" in md and "different data" in md and "Monotone diagonal" in md


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["bench", "alignment"], "give --variant"),
        (["bench", "alignment", "--variant", "mamba3"], "invalid choice"),
        (["bench", "alignment", "--model", "/no/such/dir"], "no trained model"),
        (["bench", "alignment", "--variant", "mamba1", "--scale", "paper"], "no trained model"),
        (["bench", "copying", "--variant", "mamba1", "--rows", "input"], "invalid choice"),
        # flags that would choose nothing are refused (they were recorded in the report's command, not followed)
        (["bench", "alignment", "--model", "/no/such/dir", "--seed", "3"], "--seed: --model gives the models"),
        (["bench", "alignment", "--variant", "mamba1", "--scale", "paper", "--seed", "3"], "--seed: the paper-scale"),
        (["bench", "alignment", "--variant", "mamba1", "--scale", "paper", "--train-steps", "7"], "tiny scale only"),
    ],
)
def test_bench_alignment_errors_are_one_line(argv, fragment, capsys, tmp_path, monkeypatch):
    from latim_captum.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("latim: error:") and fragment in err, err


def test_an_unknown_method_fails_before_any_work():
    """A misspelt method name is refused before the accuracy and the first method run, and before any report is
    written through ``on_update`` (it used to fail after the methods before it, leaving a partial report)."""
    from latim_captum.alignment import evaluate as ev

    model, task = _tiny_model()
    updates = []
    with pytest.raises(ValueError, match="unknown method 'alti_logti'"):
        ev.evaluate_model(model, task, n_samples=2, methods=["l2", "alti_logti"], quiet=True, on_update=updates.append)
    assert updates == []


def test_bench_alignment_resume_runs_only_what_each_model_lacks(tmp_path, capsys):
    """``--resume`` continues a suite cut short: a model's finished methods are kept as they were (not recomputed),
    its missing ones and a model the cut run never reached are computed as a fresh run computes them; another
    model's report, other pairs, a model left out and a file that is no alignment report are refused by name."""
    import json

    from latim_captum.cli import main

    runs = tmp_path / "runs"
    models = [str(runs / f"alignment-{v}-tiny") for v in ("mamba1", "mamba2")]

    def bench(out, *extra, model=models, n="3"):
        argv = ["bench", "alignment", "--model", *model, "--n-samples", n, "--out", str(tmp_path / out), "--quiet"]
        return main([*argv, *extra])

    def suite(out):
        return json.loads((tmp_path / out / "alignment-tiny.json").read_text())

    def suite_of(out, variant="mamba2"):  # a run of one model
        return json.loads((tmp_path / out / f"alignment-{variant}-tiny.json").read_text())

    argv = ["bench", "alignment", "--variant", "mamba1", "mamba2", "--train-steps", "2", "--train-out", str(runs),
            "--n-samples", "3", "--methods", "l2", "--out", str(tmp_path / "trained"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert bench("cut", "--methods", "l2") == 0
    cut = suite("cut")
    reached_one = {**cut, "models": {"mamba1": cut["models"]["mamba1"]}}  # cut before the second model
    (tmp_path / "one.json").write_text(json.dumps(reached_one))
    assert bench("fresh", "--methods", "alti_logit") == 0
    fresh = suite("fresh")

    assert bench("resumed", "--methods", "l2", "alti_logit", "--resume", str(tmp_path / "one.json")) == 0
    resumed = suite("resumed")
    assert resumed["meta"]["resumed_from"] == [cut["meta"]["command"]]
    first = resumed["models"]["mamba1"]
    assert list(first["methods"]) == ["l2", "alti_logit"]
    assert first["methods"]["l2"] == cut["models"]["mamba1"]["methods"]["l2"], "a finished method is kept, seconds too"
    assert first["accuracy"] == cut["models"]["mamba1"]["accuracy"]
    for variant in ("mamba1", "mamba2"):
        model = resumed["models"][variant]
        assert (
            model["methods"]["alti_logit"]["readings"] == fresh["models"][variant]["methods"]["alti_logit"]["readings"]
        )
    assert (
        resumed["models"]["mamba2"]["methods"]["l2"]["readings"]
        == cut["models"]["mamba2"]["methods"]["l2"]["readings"]
    )
    capsys.readouterr()

    whole = str(tmp_path / "cut" / "alignment-tiny.json")
    other = {**cut, "models": {**cut["models"], "mamba2": {**cut["models"]["mamba2"], "meta": {
        **cut["models"]["mamba2"]["meta"], "weights": cut["models"]["mamba1"]["meta"]["weights"]}}}}  # fmt: skip
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert bench("x1", "--methods", "alti", "--resume", str(tmp_path / "other.json")) == 2
    assert "other weights" in capsys.readouterr().err
    refused = tmp_path / "x1"
    assert not refused.exists() or not any(refused.iterdir()), "the weights are checked before any model is scored"
    assert bench("x2", "--methods", "alti", "--resume", whole, n="2") == 2
    assert "differs from this run in n_samples" in capsys.readouterr().err
    refused = tmp_path / "x2"
    assert not refused.exists() or not any(refused.iterdir()), "the settings are checked before any model is scored"
    assert bench("x3", "--methods", "alti", "--resume", whole, model=models[1:]) == 2
    assert "holds mamba1, which this run does not score" in capsys.readouterr().err
    # one report per model (two cut runs of one model each) resume together; a model in two of them is refused
    assert bench("m2", "--methods", "l2", model=models[1:]) == 0
    per_model = [str(tmp_path / "one.json"), str(tmp_path / "m2" / "alignment-mamba2-tiny.json")]
    assert bench("merged", "--methods", "l2", "--resume", *per_model) == 0
    merged = suite("merged")
    assert merged["meta"]["resumed_from"] == [cut["meta"]["command"], suite_of("m2")["meta"]["command"]]
    assert merged["meta"]["command"].endswith("--resume " + " ".join(per_model))
    merged_md = (tmp_path / "merged" / "alignment-tiny.md").read_text()
    assert "computed by: " + "; ".join(f"`{c}`" for c in merged["meta"]["resumed_from"]) in merged_md
    for variant, source in (("mamba1", reached_one), ("mamba2", suite_of("m2"))):
        assert merged["models"][variant]["methods"] == source["models"][variant]["methods"], "nothing left to run"
    assert bench("x5", "--methods", "l2", "--resume", whole, per_model[1]) == 2
    assert "mamba2 is in two reports" in capsys.readouterr().err
    copying = tmp_path / "copying.json"
    copying.write_text(json.dumps({"meta": {}, "methods": {}}))
    assert bench("x4", "--methods", "alti", "--resume", str(copying)) == 2
    assert "not a report of latim bench alignment" in capsys.readouterr().err


def test_bench_alignment_cut_during_one_model_keeps_the_others_resumed_rows(tmp_path, monkeypatch, capsys):
    """A resumed run cut while it scores its first model still writes the second model's resumed rows (the next
    --resume of its report must not score that model again), in run order; the report on disk is whole."""
    import json

    import latim_captum.alignment.evaluate as ev
    from latim_captum.cli import main

    runs = tmp_path / "runs"
    argv = ["bench", "alignment", "--variant", "mamba1", "mamba2", "--train-steps", "2", "--train-out", str(runs),
            "--n-samples", "3", "--methods", "l2", "--out", str(tmp_path / "first"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    first = json.loads((tmp_path / "first" / "alignment-tiny.json").read_text())
    only_second = {**first, "models": {"mamba2": first["models"]["mamba2"]}}
    (tmp_path / "second.json").write_text(json.dumps(only_second))
    real = ev.evaluate_model

    def cut_after_the_errors(model, task, **kwargs):
        update = kwargs["on_update"]

        def update_then_stop(report):
            update(report)
            raise RuntimeError("time limit")

        return real(model, task, **{**kwargs, "on_update": update_then_stop})

    monkeypatch.setattr(ev, "evaluate_model", cut_after_the_errors)
    models = [str(runs / f"alignment-{v}-tiny") for v in ("mamba1", "mamba2")]
    argv = ["bench", "alignment", "--model", *models, "--n-samples", "3", "--methods", "l2", "alti",
            "--resume", str(tmp_path / "second.json"), "--out", str(tmp_path / "cut"), "--quiet"]  # fmt: skip
    assert main(argv) != 0
    assert "time limit" in capsys.readouterr().err
    cut = json.loads((tmp_path / "cut" / "alignment-tiny.json").read_text())
    assert list(cut["models"]) == ["mamba1", "mamba2"], "the second model's resumed rows, in run order"
    assert cut["models"]["mamba2"]["methods"] == first["models"]["mamba2"]["methods"]
    assert cut["models"]["mamba1"]["methods"] == {}, "cut after the first model's decomposition errors"
    assert not list((tmp_path / "cut").glob("*.partial")), "no half-written file is left"
