"""Predictors on tiny hand-built traces, with the expected masks worked out by hand in each docstring."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sparsesim.errors import InputError
from sparsesim.simulator.predictors import PREDICTORS, CausalityError, Predictor, PredictorContext
from sparsesim.simulator.predictors.evaluation import confusion, replay
from sparsesim.simulator.simulate import parse_policy, simulate
from sparsesim.tracefile import TraceWriter, read_trace
from tracebuild import write_trace

D = 8   # neurons per layer in the hand-built traces (one byte per mask row)


def bits(*sets: set[int], d: int = D) -> np.ndarray:
    """bool [len(sets), d] from index sets."""
    out = np.zeros((len(sets), d), dtype=bool)
    for row, members in enumerate(sets):
        out[row, list(members)] = True
    return out


def trace_of(path, layers: list[list[set[int]]], tokens=None, d: int = D) -> str:
    """``layers[l][t]`` is token t's active set in layer l."""
    active = np.stack([bits(*sets, d=d) for sets in layers], axis=1)   # [T, L, d]
    return write_trace(path, active, d_model=16, tokens=None if tokens is None else np.asarray(tokens))


def run(trace_path, spec: str, train_path=None, lookahead: int = 1, schedule: str = "layer", seed: int = 0):
    """Replay ``spec`` over the trace; returns (predicted sets [T][L] or None, Confusion)."""
    trace = read_trace(trace_path)
    train = read_trace(train_path) if train_path else None
    name, params = parse_policy(spec)
    predictor = PREDICTORS.create(name, params)
    predictor.setup(PredictorContext.of(trace, train, seed))
    predicted, issued = replay(trace.masks, trace.token, predictor, lookahead=lookahead, schedule=schedule)
    sets = [[set(np.flatnonzero(np.unpackbits(predicted[t, l], bitorder="little")[:trace.d_ff[l]]).tolist())
             if issued[t, l] else None for l in range(trace.n_layers)] for t in range(trace.n_tokens)]
    return sets, confusion(trace.masks, predicted, issued)


# Token ids 5, 7, 5, 5; layer 0 and layer 1 sets per token.
LAYER0 = [{0, 1, 2}, {1, 2, 3}, {0, 1, 6}, {2, 3}]
LAYER1 = [{4, 5}, {5, 6}, {4, 7}, {4, 5, 6}]
IDS = [5, 7, 5, 5]


@pytest.fixture
def small(tmp_path):
    return trace_of(tmp_path / "small.parquet", [LAYER0, LAYER1], IDS)


def test_previous_token(small):
    """(t, l) <- mask(t-1, l); token 0 gets no prediction."""
    sets, _ = run(small, "previous-token")
    assert [s[0] for s in sets] == [None, LAYER0[0], LAYER0[1], LAYER0[2]]
    assert [s[1] for s in sets] == [None, LAYER1[0], LAYER1[1], LAYER1[2]]


def test_previous_token_reaches_back_when_lookahead_exceeds_the_layers(small):
    """Lookahead 3 with 2 layers: (t, l) is issued at step 2t+l-3, when token t-1's layer l is not
    done yet; the latest visible token is t-2. (1, 1) is issued at step 0: nothing visible."""
    sets, _ = run(small, "previous-token", lookahead=3)
    assert [s[0] for s in sets] == [None, None, LAYER0[0], LAYER0[1]]
    assert [s[1] for s in sets] == [None, None, LAYER1[0], LAYER1[1]]


def test_window(small):
    """k=2 union of layer 1: (1) {4,5}; (2) {4,5}|{5,6}; (3) {5,6}|{4,7}.
    threshold=1.0 (active in every window token): (1) {4,5}; (2) {5}; (3) {} ."""
    sets, _ = run(small, "window:k=2")
    assert [s[1] for s in sets] == [None, {4, 5}, {4, 5, 6}, {4, 5, 6, 7}]
    sets, _ = run(small, "window:k=2,threshold=1.0")
    assert [s[1] for s in sets] == [None, {4, 5}, {5}, set()]


def test_token_lookup_from_the_run(small):
    """Layer 1, ids 5 7 5 5, learned from earlier tokens of the run:
    (1,1) id 7 unseen -> previous-token {4,5}; (2,1) id 5 seen once ({4,5}) -> {4,5};
    (3,1) id 5 seen twice ({4,5}, {4,7}): fractions 4:1, 5:.5, 7:.5 -> threshold .5 {4,5,7}, .75 {4}.
    Layer 0 is issued during the previous token, before the id is known: previous-token."""
    sets, _ = run(small, "token-lookup:source=run")
    assert [s[1] for s in sets] == [None, {4, 5}, {4, 5}, {4, 5, 7}]
    assert [s[0] for s in sets] == [None, LAYER0[0], LAYER0[1], LAYER0[2]]
    sets, _ = run(small, "token-lookup:source=run,threshold=0.75")
    assert sets[3][1] == {4}
    sets, _ = run(small, "token-lookup:source=run,topk=1")
    assert sets[3][1] == {4}


def test_token_lookup_from_the_training_trace(tmp_path, small):
    """Training: id 7 had layer 1 = {0} twice and {1} once -> fraction 0: 2/3, 1: 1/3 -> {0};
    id 5 never seen in training, so (2,1) learns it from the run ({4,5}); with source=train the
    run is ignored and id 5 falls back to previous-token: (2,1) = mask(1,1) = {5,6}."""
    train = trace_of(tmp_path / "train.parquet", [[{0}, {0}, {1}], [{0}, {0}, {1}]], [7, 7, 7])
    sets, _ = run(small, "token-lookup", train)
    assert [s[1] for s in sets] == [None, {0}, {4, 5}, {4, 5, 7}]
    sets, _ = run(small, "token-lookup:source=train", train)
    assert [s[1] for s in sets] == [None, {0}, {5, 6}, {4, 7}]


def test_static_hot(tmp_path, small):
    """Training layer 0 frequencies over 4 tokens: n0 4/4, n1 3/4, n2 2/4, n3 1/4, n4 1/4.
    Mean active 11/4 = 2.75 -> default top-3 {0,1,2}; threshold .75 -> {0,1}; topk 1 -> {0}."""
    layer = [{0, 1, 2, 3}, {0, 1, 2}, {0, 1, 4}, {0}]
    train = trace_of(tmp_path / "train.parquet", [layer, layer], [1, 2, 3, 4])
    for spec, expected in (("static-hot", {0, 1, 2}), ("static-hot:threshold=0.75", {0, 1}),
                           ("static-hot:topk=1", {0})):
        sets, _ = run(small, spec, train)
        assert all(s[0] == expected for s in sets), spec
    with pytest.raises(InputError, match="training"):
        run(small, "static-hot")


def shifted_training(tmp_path, shifts: list[int], tokens: int = 64) -> str:
    """Layer 0 random; layer l = layer 0 rotated by shifts[l] neurons (a linear map to learn)."""
    rng = np.random.default_rng(1)
    first = rng.random((tokens, D)) < 0.5
    active = np.stack([np.roll(first, s, axis=1) for s in shifts], axis=1)
    return write_trace(tmp_path / "train.parquet", active, d_model=16)


def test_layer_ahead_and_first_layer_learn_a_layer_map(tmp_path):
    """Training: layer 1 = layer 0 rotated by 1, layer 2 = layer 0 rotated by 3 (mod 8). Run token
    0: layer 0 = {0, 5}. layer-ahead (k=1, lookahead 0): layer 1 from layer 0 = {1, 6}; layer 2
    from layer 1's true {1, 6}, rotated by 2 = {3, 0}. first-layer: layer 1 = {1, 6}; layer 2
    from layer 0 rotated by 3 = {3, 0}. Layer 0 of the first token: nothing visible, None."""
    train = shifted_training(tmp_path, [0, 1, 3])
    run_trace = trace_of(tmp_path / "run.parquet", [[{0, 5}], [{1, 6}], [{3, 0}]])
    sets, c = run(run_trace, "layer-ahead:k=1,rank=8", train, lookahead=0)
    assert sets[0] == [None, {1, 6}, {3, 0}]     # layer 0 of the first token: nothing to see
    sets, _ = run(run_trace, "first-layer:rank=8", train, lookahead=0)
    assert sets[0] == [None, {1, 6}, {3, 0}]
    with pytest.raises(InputError, match="training"):
        run(run_trace, "layer-ahead")


def test_layer_ahead_falls_back_to_previous_token_without_a_visible_source(tmp_path):
    """Lookahead 1: (t, 1) is issued while layer 0 of t runs, so no layer of t is visible and
    layer-ahead uses previous-token; under the token schedule every layer does."""
    train = shifted_training(tmp_path, [0, 1, 3])
    L0, L1, L2 = [{0, 5}, {2}], [{1, 6}, {3}], [{3, 0}, {5}]
    run_trace = trace_of(tmp_path / "run.parquet", [L0, L1, L2])
    sets, _ = run(run_trace, "layer-ahead:rank=8", train, lookahead=1)
    assert sets[1][1] == L1[0]            # fallback: token 0's layer 1
    assert sets[1][2] == {(2 + 3) % D}    # nearest visible layer is 0 (l-2): {2} rotated by 3
    sets, _ = run(run_trace, "layer-ahead:rank=8", train, schedule="token")
    assert sets[1] == [L0[0], L1[0], L2[0]]


def test_pattern_codebook(tmp_path):
    """Training alternates pattern A = {0..3} and B = {4..7}: K=2 clusters A and B, transitions
    A->B and B->A. Run: {0,1,2} (nearest A) then {4,5} (nearest B): prediction for token 1 is
    centroid B = {4..7}, for token 2 centroid A = {0..3} (lookahead 0: with one layer, lookahead 1
    would issue token t while token t-1 still runs)."""
    A, B = {0, 1, 2, 3}, {4, 5, 6, 7}
    layer = [A, B] * 8
    train = trace_of(tmp_path / "train.parquet", [layer], list(range(16)))
    run_trace = trace_of(tmp_path / "run.parquet", [[{0, 1, 2}, {4, 5}, {1}]])
    sets, _ = run(run_trace, "pattern-codebook:clusters=2", train, lookahead=0)
    assert [s[0] for s in sets] == [None, B, A]


def test_oracle_is_perfect(small):
    _, c = run(small, "oracle")
    assert (c.fp == 0).all() and (c.fn == 0).all() and (c.tp > 0).all()
    r = simulate(small, "apple-m1-max", "oracle", "lru", settings=["dram_budget=1.0"], baselines=False)
    assert r["predictor_precision"] == 1.0 and r["predictor_recall"] == 1.0


def test_noisy_oracle_hits_its_rates(tmp_path):
    """2 x 1e5+ decisions: FN / active within 1 % of fn, FP / inactive within 1 % of fp."""
    rng = np.random.default_rng(3)
    active = rng.random((1000, 1, 256)) < 0.5
    path = write_trace(tmp_path / "big.parquet", active, d_model=16)
    _, c = run(path, "noisy-oracle:fn=0.2,fp=0.1", seed=7)
    n_active, n_inactive = active.sum(), (~active).sum()
    assert n_active > 1e5 and n_inactive > 1e5
    assert abs(c.fn.sum() / n_active - 0.2) < 0.01
    assert abs(c.fp.sum() / n_inactive - 0.1) < 0.01
    # Seeded: the same seed gives the same predictions.
    _, again = run(path, "noisy-oracle:fn=0.2,fp=0.1", seed=7)
    assert (again.fp == c.fp).all() and (again.fn == c.fn).all()


def write_with_column(path, learned: dict | None) -> str:
    """4 tokens x 2 layers with a stored column 'lr' predicting {t} for token t in both layers."""
    masks = np.packbits(bits(*[LAYER0[t] for t in range(4)]), axis=-1, bitorder="little")
    masks = np.stack([masks, np.packbits(bits(*LAYER1), axis=-1, bitorder="little")], axis=1)
    stored = np.packbits(np.repeat(bits(*[{t} for t in range(4)])[:, None], 2, axis=1), axis=-1, bitorder="little")
    model = {"name": "hand-built", "n_layers": 2, "d_model": 16, "d_ff": [D, D], "glu": True, "non_ffn_params": 0}
    meta = {"model": model} if learned is None else {"model": model, "learned": {"lr": learned}}
    with TraceWriter(path, meta, extra=("lr",)) as w:
        w.write(np.zeros(4), np.arange(4), np.array(IDS), masks, {"lr": stored})
    return str(path)


def test_stored_replays_only_unseen_tokens(tmp_path):
    """train_rows [0, 2): tokens 0 and 1 get no prediction; tokens 2 and 3 get the column ({t})."""
    path = write_with_column(tmp_path / "s.parquet", {"train_rows": [0, 2], "input_offset": 0, "flops_per_layer": 10.0})
    sets, c = run(path, "stored:name=lr", lookahead=0)
    assert sets == [[None, None], [None, None], [{2}, {2}], [{3}, {3}]]
    assert c.issued.tolist() == [2, 2]


def test_stored_refuses_unsafe_use(tmp_path):
    path = write_with_column(tmp_path / "s.parquet", {"train_rows": None, "input_offset": 0})
    # The prediction needs the FFN input of the same layer: not there one layer ahead.
    with pytest.raises(CausalityError, match="lookahead <= 0"):
        run(path, "stored:name=lr", lookahead=1)
    with pytest.raises(InputError, match="no column pred:missing"):
        run(path, "stored:name=missing")
    bare = write_with_column(tmp_path / "bare.parquet", None)
    with pytest.raises(InputError, match="trained on"):
        run(bare, "stored:name=lr", lookahead=0)


def test_threshold_and_topk_are_exclusive_and_validated():
    for spec in ("window:threshold=0.5,topk=3", "token-lookup:threshold=1.5", "layer-ahead:rank=0",
                 "pattern-codebook:clusters=0", "noisy-oracle:fn=2"):
        name, params = parse_policy(spec)
        with pytest.raises(InputError):
            PREDICTORS.create(name, params)


class ReadsTheTarget(Predictor):
    """Cheats: reads the true mask of the very (token, layer) it predicts."""

    def predict(self, view, token, layer):
        return view.mask(token, layer)


REALISABLE = ["previous-token", "window:k=3,threshold=0.5", "token-lookup", "static-hot", "layer-ahead:rank=4",
              "first-layer:rank=4", "pattern-codebook:clusters=3", "noisy-oracle"]
SCHEDULES = [["lookahead=0"], ["lookahead=1"], ["lookahead=3"], ["schedule=token"]]


@pytest.fixture
def random_pair(tmp_path):
    rng = np.random.default_rng(0)
    return (write_trace(tmp_path / "eval.parquet", rng.random((12, 3, 16)) < 0.4, d_model=16,
                        tokens=rng.integers(0, 4, 12)),
            write_trace(tmp_path / "train.parquet", rng.random((30, 3, 16)) < 0.4, d_model=16,
                        tokens=rng.integers(0, 4, 30)))


@pytest.mark.parametrize("settings", SCHEDULES)
def test_the_simulator_refuses_a_cheating_predictor(monkeypatch, random_pair, settings):
    monkeypatch.setitem(PREDICTORS._classes, "test-cheat", ReadsTheTarget)
    with pytest.raises(CausalityError):
        simulate(random_pair[0], "apple-m1-max", "test-cheat", "lru", settings=["dram_budget=1.0", *settings],
                 baselines=False)


@pytest.mark.parametrize("settings", SCHEDULES)
def test_realisable_predictors_never_trip_causality(random_pair, settings):
    """Through the engine, for every schedule; and the replay's counters equal the engine's."""
    trace, train = random_pair
    lookahead = int(settings[0].split("=")[1]) if settings[0].startswith("lookahead") else 1
    schedule = "token" if settings[0] == "schedule=token" else "layer"
    for spec in REALISABLE:
        r = simulate(trace, "apple-m1-max", spec, "lru", settings=["dram_budget=1.0", *settings],
                     train_trace=train, baselines=False)
        engine = json.loads(r["per_layer"])
        _, c = run(trace, spec, train, lookahead=lookahead, schedule=schedule)
        assert (engine["pred_tp"], engine["pred_fp"], engine["pred_fn"]) == \
            (c.tp.tolist(), c.fp.tolist(), c.fn.tolist()), spec


class IndexArithmetic(Predictor):
    """Cheats by index arithmetic that numpy would wrap around to the end of the trace."""

    def __init__(self, how: str = "negative-token"):
        self.how = how

    def predict(self, view, token, layer):
        if self.how == "negative-token":      # mask(token - T): numpy reads the same row T tokens "back"
            return view.mask(token - view.n_tokens, layer)
        if self.how == "negative-layer":      # layer -1 of this token: numpy reads the last layer
            return view.mask(token, layer - view.n_layers)
        if self.how == "wrapped-union":       # a union over a layer index past the end
            return view.union(layer + view.n_layers, 0, token)
        if self.how == "token-id":            # the id of token -1: numpy reads the last token's id
            view.token_id(-1)
            return None
        return view.mask(float(token), layer)  # a float index


@pytest.mark.parametrize("how", ["negative-token", "negative-layer", "wrapped-union", "token-id", "float"])
def test_no_index_arithmetic_reaches_beyond_the_issue_point(monkeypatch, random_pair, how):
    monkeypatch.setitem(PREDICTORS._classes, "test-index", IndexArithmetic)
    with pytest.raises(CausalityError):
        simulate(random_pair[0], "apple-m1-max", f"test-index:how={how}", "lru", settings=["dram_budget=1.0"],
                 baselines=False)


@pytest.mark.parametrize("predictor, cache, sees, policy_sees", [
    ("oracle", "lru", True, False), ("noisy-oracle", "lru", True, False), ("previous-token", "lru", False, False),
    ("none", "belady", False, True), ("none", "static-pin", False, True)])
def test_records_say_which_runs_see_the_future(random_pair, predictor, cache, sees, policy_sees):
    r = simulate(random_pair[0], "apple-m1-max", predictor, cache, settings=["dram_budget=1.0"], baselines=False)
    assert (r["predictor_sees_future"], r["policy_sees_future"], r["bound"]) == (sees, policy_sees, sees or policy_sees)


def test_static_pin_profiled_on_other_text_is_a_design(random_pair):
    trace, train = random_pair
    r = simulate(trace, "apple-m1-max", "none", "static-pin", settings=["dram_budget=1.0"], profile_trace=train,
                 baselines=False)
    assert not r["policy_sees_future"] and not r["bound"]
