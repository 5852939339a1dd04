"""Speculative drafts on the fake model: prompt lookup, drafts under the mask, argmax output identical with and without drafts,
exact speculative sampling, and the batch rows holding only the accepted tokens."""
import math

import numpy as np
import pytest

import lmql_lite
from lmql_lite import api, decoders, speculate
from lmql_lite.constraints import Mask, compile_guide, terms
from lmql_lite.decoders import DecoderOptions
from lmql_lite.interpreter import Runner
from lmql_lite.models.fake import FakeModel


@pytest.fixture
def fake():
    return FakeModel()


@pytest.fixture(autouse=True)
def eager_lookup(monkeypatch):
    """The fake model's tokens are mostly single characters: matches of 2 bytes make its text draft
    often, and often wrongly, which is what the tests of drafts need."""
    monkeypatch.setattr(speculate.PromptLookup, "SHORTEST", 2)


def lookup(model, shortest=4, **sizes):
    return speculate.PromptLookup(model.vocabulary.tokens, model.encode, shortest=shortest, **sizes)


def test_prompt_lookup_matches_text_however_it_was_cut_into_tokens(fake):
    # The document has " positive" as one token; the row ends with the token " pos". No token
    # n-gram of the end occurs earlier, but its text " pos" does (" positive").
    (positive,), (pos,) = fake.encode(" positive"), fake.encode(" pos")
    tokens = fake.encode("Review: it was positive indeed. Label:") + [pos]
    assert positive in tokens and pos not in tokens[:-1]
    found = lookup(fake).propose(tokens, 4)
    assert fake.decode(found.tokens) == "itive in" and found.evidence == len(" pos")


def test_prompt_lookup_takes_the_latest_place_of_the_longest_match(fake):
    found = lookup(fake).propose(fake.encode("one ab cd1; two ab cd2; ab cd"), 3)
    assert fake.decode(found.tokens) == "2; " and found.evidence == len(" ab cd")
    # a match is at most `longest` bytes, and at least `shortest`
    assert lookup(fake, longest=4).propose(fake.encode("xx ab cd1; ab cd"), 1).evidence == 4
    assert lookup(fake).propose(fake.encode("abcdefgh ab"), 5) is None
    assert lookup(fake).propose(fake.encode("abcdefgh abc"), 0) is None


def test_a_proposal_nobody_wants_is_not_spelt(fake):
    spelt = []
    look = speculate.PromptLookup(fake.vocabulary.tokens, lambda text: spelt.append(text) or fake.encode(text), shortest=4)
    tokens = fake.encode("one ab cd1; two ab cd2; ab cd")
    assert look.propose(tokens, 3, wanted=lambda evidence: evidence > 6) is None and spelt == []
    assert look.propose(tokens, 3, wanted=lambda evidence: evidence == 6).evidence == 6 and len(spelt) == 1


def test_a_proposal_may_run_into_the_rows_own_end(fake):
    found = lookup(fake).propose(fake.encode("hey abcd abcd"), 9)
    assert fake.decode(found.tokens) == " abcd"


def test_a_value_that_starts_after_punctuation_is_looked_up_as_a_word(fake):
    # `"Dr` has no match of 3 bytes, but the document spells the word ` Dr`; `: 2` (too short) finds ` 2025`.
    found = lookup(fake, shortest=3).propose(fake.encode('Led by Dr. Ada Byron. {"leader": "Dr'), 3)
    assert fake.decode(found.tokens) == ". A" and found.evidence == len(" Dr")
    found = lookup(fake, shortest=3).propose(fake.encode('It opens in 2025. {"opens": 2'), 3)
    assert fake.decode(found.tokens) == "025" and found.evidence == len(" 2")
    # the word needs a space before it earlier; a match of the row's own end comes first
    assert lookup(fake, shortest=3).propose(fake.encode('Led by "Dr. Ada. {"leader": "Dr'), 3).evidence == len(' "Dr')
    assert lookup(fake, shortest=3).propose(fake.encode('Led by-Dr. Ada. {"leader": "Dr'), 3) is None


def test_punctuation_and_the_end_of_a_word_are_no_match(fake):
    # Both keys end in `s": "`: what followed the first is its value, no guess at the second's.
    assert lookup(fake, shortest=3).propose(fake.encode('{"opens": "2025", "focus": "'), 3) is None
    assert lookup(fake, shortest=3).propose(fake.encode('{"a": "x", "b": "'), 3) is None
    # from the word's start, a match is one: ` the cat` of `wz the cat`
    found = lookup(fake, shortest=3).propose(fake.encode("xyz the cat is. wz the cat"), 2)
    assert found.evidence == len(" the cat") and fake.decode(found.tokens) == " i"
    # a match cut by `longest` may start inside a word: the text before it was not compared
    assert lookup(fake, longest=4).propose(fake.encode("xx ab cd1; ab cd"), 1).evidence == 4


class Listed:
    """A proposer that always proposes the same tokens (to test the drafter's rules alone)."""

    def __init__(self, tokens, evidence=32):
        self.tokens, self.evidence = tokens, evidence

    def propose(self, tokens, limit, wanted=None):
        return speculate.Proposal(self.tokens[:limit], self.evidence)


def filling_for(model, term, index):
    from types import SimpleNamespace
    guide = compile_guide(term, "X", index)
    return SimpleNamespace(guide=guide)


FLAT = speculate.Learned(lambda width: 1.0)  # wider passes cost nothing more: every guess pays


def test_a_draft_stops_at_the_first_token_the_constraint_forbids_and_leaves_the_guide_alone(fake):
    index = api._index(fake)
    enc = fake.encode
    f = filling_for(fake, terms.Regex("X", r"[a-c]+"), index)
    drafter = speculate.Drafter(Listed(enc("abcab") + enc("z") + enc("abc")), enc, fake.vocabulary.eos_ids, FLAT)
    before = f.guide.allowed().ids.copy()
    assert drafter.draft(f, [], 20) == enc("abcab")
    np.testing.assert_array_equal(f.guide.allowed().ids, before)  # drafting advanced a copy only
    assert drafter.draft(f, [], 2) == enc("abcab")[:2]  # the room given is the most it drafts


def test_forced_text_is_drafted_for_free(fake):
    index = api._index(fake)
    enc = fake.encode
    # After "a", the regex forces "-2024": the drafter spells it without the proposer.
    f = filling_for(fake, terms.Regex("X", r"(a|b)-2024!"), index)
    drafter = speculate.Drafter(Listed(enc("a")), enc, fake.vocabulary.eos_ids, FLAT)
    draft = drafter.draft(f, [], 20)
    assert fake.decode(draft) == "a-2024!"


def test_a_healed_boundary_is_guessed_as_the_prompt_spelt_it(fake):
    # Healing took the prompt's last token (" ") back: the draft's first token is that token, a
    # guess of its own kind, counted model-wide and never in the hole's own history.
    from types import SimpleNamespace
    enc = fake.encode
    guide = compile_guide(terms.Regex("X", r"[a-c]+"), "X", api._index(fake))
    assert guide.heal(b" ")
    prompt = enc("Name:")
    f = SimpleNamespace(guide=guide, heal_prefix=b" ", start=len(prompt))
    learned = speculate.Learned(lambda width: 1.0)
    drafter = speculate.Drafter(Listed(enc("abc"), evidence=8), enc, fake.vocabulary.eos_ids, learned)
    assert drafter.draft(f, prompt, 3) == enc(" ") + enc("abc")
    drafter.kept(f, 1)  # the healed token kept, the first guess after it refused
    prior = speculate.Learned.PRIOR[speculate.BOUNDARY] * 2
    assert learned.chance(speculate.BOUNDARY) == pytest.approx((prior + 1) / 3)
    assert learned.site(speculate.site_of(f)) == [0, 1]
    assert learned.site((speculate.site_of(f), speculate.BOUNDARY)) == [1, 1]  # the boundary's own count
    # past the hole's first token there is nothing to heal
    guide.advance(enc(" ")[0])
    assert drafter.draft(f, prompt + enc(" "), 2) == enc("abc")


def test_a_healed_boundary_whose_guess_is_refused_is_guessed_no_more(fake):
    # After `1. ` the model writes ` Apple`, not the space alone: once refused at this hole, no more guesses there.
    from types import SimpleNamespace
    enc = fake.encode
    learned = speculate.Learned(lambda width: 1.0 if width == 1 else 1.3)
    drafter = speculate.Drafter(Listed([]), enc, fake.vocabulary.eos_ids, learned)

    program = SimpleNamespace(query=SimpleNamespace(source='"1.[X]"'))

    def at_the_boundary():  # the same hole of the same query, run after run
        guide = compile_guide(terms.Regex("X", r" ?[a-c]+"), "X", api._index(fake))
        assert guide.heal(b" ")
        return SimpleNamespace(guide=guide, heal_prefix=b" ", start=2, program=program,
                               hole=SimpleNamespace(name="X", line=1, column=4))

    f = at_the_boundary()
    assert drafter.draft(f, enc("1."), 4) == enc(" ")
    drafter.kept(f, 0)
    assert learned.site((speculate.site_of(f), speculate.BOUNDARY)) == [0, 1]
    assert drafter.draft(at_the_boundary(), enc("1."), 4) == []
    # another hole's boundary still gets its guess
    other = at_the_boundary()
    other.hole = SimpleNamespace(name="X", line=2, column=4)
    assert drafter.draft(other, enc("1."), 4) == enc(" ")


def test_a_draft_must_pay_for_the_logits_a_plain_pass_over_few_tokens_skips():
    drafter = speculate.Drafter(Listed([]), None, frozenset(), speculate.Learned(lambda width: 1.0))
    refused = [0, 3]  # this hole's guesses: 0 kept of 3, a chance of about 0.22
    assert drafter.worth([3], hole=refused) == 1
    assert drafter.worth([3], hole=refused, sparse=True) == 0  # the plain pass is an eighth cheaper
    assert drafter.worth([None], sparse=True) == 1  # a sure token pays all the same


def test_a_healed_token_costs_no_pass_of_its_own(fake):
    # Without drafts, healing costs a pass: the prompt without its last token, then the token the
    # model chose in its place. With them, that token is guessed in the prompt's pass.
    source = '"Name: [A]" where len(TOKENS(A)) < 3\n'
    on, off = run(source, fake), run(source, fake, speculate=False)
    assert on.prompt == off.prompt and on.trace.tokens_fed == off.trace.tokens_fed
    assert (on.trace.forward_passes, off.trace.forward_passes) == (1, 2)
    assert (on.trace.drafted_tokens, on.trace.accepted_tokens) == (1, 1)
    unhealed = run('argmax(healing=False)\n' + source, fake)
    assert unhealed.trace.forward_passes == 2  # no healing: the value's two tokens, a pass each


def test_rows_of_different_prompts_guess_their_healed_tokens_in_the_first_pass(fake):
    source = '"{who}: [A]" where len(TOKENS(A)) < 3\n'
    rows = [{"who": "Name"}, {"who": "City of birth"}]
    on = dict(api.run_batch(source, rows, model=fake, batch_size=2))
    off = dict(api.run_batch(source, rows, model=fake, batch_size=2, speculate=False))
    assert [on[i].prompt for i in range(2)] == [off[i].prompt for i in range(2)]
    assert on[0].trace.forward_passes == 1 < off[0].trace.forward_passes  # guessed on the padded first pass
    # n rows of one prompt: the prompt is encoded once and copied, no draft on that pass
    both = run('argmax(n=2)\n"Name: [A]" where len(TOKENS(A)) < 3\n', fake)
    assert [r.prompt for r in both] == [on[0].prompt] * 2 and all(r.trace.drafted_tokens == 0 for r in both)


def linear(per_token):
    return speculate.Learned(lambda width: 1.0 + per_token * (width - 1))


def test_a_draft_is_cut_where_it_pays_most():
    drafter = speculate.Drafter(Listed([]), None, frozenset(), linear(0.6))
    # llama.cpp on a CPU: each extra token costs 0.6 of a pass; a short match's guess (kept about half the time) does not pay
    assert drafter.worth([3, 3, 3, 3]) == 0
    # a token the hole must take pays there (2 tokens for 1.6 passes), the guesses after it do not
    assert drafter.worth([None, 3, 3]) == 1
    for _ in range(40):
        drafter.learned.saw(6, True)
    assert drafter.learned.chance(6) > 0.9 and drafter.worth([6] * 8) >= 6  # a copy in full flow
    # transformers on a CPU: any width up to 9 costs about 1.8 passes; one short guess does not pay,
    # two sure tokens and two guesses after them do, all four
    flat_wide = speculate.Drafter(Listed([]), None, frozenset(), speculate.Learned(lambda w: 1.0 if w == 1 else 1.8))
    assert flat_wide.worth([3]) == 0 and flat_wide.worth([None, None, 3, 3]) == 4


def test_a_hole_whose_guesses_are_refused_stops_drafting():
    # a long match (chance 0.9 model-wide) that this hole's model refuses twice: a few-shot
    # prompt's earlier answer, proposed where the model writes its own
    drafter = speculate.Drafter(Listed([]), None, frozenset(), speculate.Learned(lambda w: 1.0 if w == 1 else 1.8))
    assert drafter.worth([6] * 8) == 8
    assert drafter.worth([6] * 8, hole=[0, 2]) == 0
    assert drafter.worth([6] * 8, hole=[4, 4]) == 8


def test_kept_counts_guesses_until_the_first_refused(fake):
    enc = fake.encode
    f = filling_for(fake, terms.Regex("X", r"[a-c]+"), api._index(fake))
    learned = speculate.Learned(lambda width: 1.0)
    drafter = speculate.Drafter(Listed(enc("abc"), evidence=8), enc, fake.vocabulary.eos_ids, learned)
    strength = learned.strength(8)
    assert enc("abc") == enc("ab") + enc("c")
    for _ in range(3):
        assert drafter.draft(f, [], 2) == enc("abc")
        drafter.kept(f, 1)  # "ab" kept, "c" refused
    hits, trials = speculate.Learned.PRIOR[strength] * 2, 2
    assert learned.chance(strength) == pytest.approx((hits + 3) / (trials + 6))
    assert drafter.draft(f, [], 3) == enc("abc") + enc("ab")  # the proposal again after its end
    drafter.kept(f, 3)  # all three kept: three hits
    assert learned.chance(strength) == pytest.approx((hits + 6) / (trials + 9))
    assert learned.observed(strength) == pytest.approx((6, 9))  # beyond the prior
    assert learned.site(speculate.site_of(f)) == [6, 9]  # the hole's own count, which `worth` leans on
    drafter.kept(f, 0)  # no draft pending: nothing counted
    assert learned.chance(strength) == pytest.approx((hits + 6) / (trials + 9))


def test_a_hole_refused_in_one_run_drafts_less_in_the_next_run_of_the_same_query(fake):
    # A few-shot prompt's earlier answer matches well (a long match, chance 0.9 model-wide) and the
    # model never copies it: each run is a new drafter, but the hole's history is the model's.
    from types import SimpleNamespace
    enc = fake.encode
    learned = speculate.Learned(lambda w: 1.0 if w == 1 else 1.8)
    program = SimpleNamespace(query=SimpleNamespace(source='"Q: x\nA: abc\nQ: y\nA:[X]"'))
    hole = SimpleNamespace(name="X", line=1, column=20)

    def a_run():
        f = filling_for(fake, terms.Regex("X", r"[a-c]+"), api._index(fake))
        f.program, f.hole = program, hole
        return speculate.Drafter(Listed(enc("abcabc")), enc, fake.vocabulary.eos_ids, learned), f

    drafter, f = a_run()
    assert drafter.draft(f, [], 6)  # the first run tries the copy
    drafter.kept(f, 0)
    drafter, f = a_run()
    assert drafter.draft(f, [], 6) == []  # the next run of the same query does not
    other, g = a_run()
    g.hole = SimpleNamespace(name="X", line=2, column=5)  # another hole: its own history
    assert other.draft(g, [], 6)
    other.kept(g, 6)
    for _ in range(20):  # halved past SITE_CAP, so the latest runs weigh most
        other.draft(g, [], 6)
        other.kept(g, 6)
    assert learned.site(speculate.site_of(g))[1] <= learned.SITE_CAP


def test_pass_costs_are_the_medians_of_timed_passes_by_width():
    costs = speculate.PassCosts()
    assert costs.relative(1) == 1.0 and costs.relative(5) == pytest.approx(1.4)  # nothing measured: nearly free
    for seconds in (0.010, 0.011, 0.009, 0.5):  # one stray slow pass does not move a median
        costs.record(1, seconds)
    for seconds in (0.018, 0.018):
        costs.record(3, seconds)
    costs.record(9, 0.030)
    costs.record(500, 9.0)  # a prompt: not recorded
    assert costs.relative(3) == pytest.approx(1.72, rel=0.01)
    assert costs.relative(6) == pytest.approx((1.72 + 2.857) / 2, rel=0.01)  # between measured widths
    assert costs.relative(2) == pytest.approx(1.36, rel=0.01)
    assert costs.relative(20) == pytest.approx(2.857, rel=0.01)  # wider than measured: as the widest
    assert speculate.PassCosts(lambda w: 2.0 * w).relative(3) == 6.0  # a model's own costs win


def run(source, model, **options):
    return lmql_lite.run(source, model=model, trace=True, **options)


PAGE = ("The meeting is on Tuesday in the blue room. The speaker is Ada Lovelace, who wrote the first program. "
        "Ada Lovelace was born in 1815.")
QUERIES = [
    # free text that the fake model continues by copying (its logits depend on the last two tokens only)
    f'"{PAGE}\\nQ: who spoke?\\nA: The speaker is[A]" where STOPS_AT(A, ".") and len(TOKENS(A)) < 30\n',
    f'"{PAGE}\\nQ: when?\\nA: The meeting is[A]\\nB: Ada[B]" where len(TOKENS(A)) < 12 and len(TOKENS(B)) < 9\n',
    # constraints that cut drafts: a regex, a choice list, an int, a budget
    f'"{PAGE}\\nThe speaker is [A]" where REGEX(A, r"[A-Z][a-z]+( [A-Z][a-z]+)?")\n',
    f'"{PAGE}\\nRoom: the[A]" where A in [" blue room", " red room", " blue"]\n',
    f'"{PAGE}\\nBorn in [Y]" where INT(Y) and len(TOKENS(Y)) < 6\n',
    f'argmax(max_tokens=5)\n"{PAGE}\\nThe speaker is[A]"\n',
    # healing at a hole's start: the prompt ends inside a token the value re-spells
    f'"{PAGE}\\nThe speaker is Ada Love[A]" where len(TOKENS(A)) < 8\n',
    # a hole whose text the guide forces in part
    f'"{PAGE}\\nDate: [D]" where REGEX(D, r"(Tuesday|Monday) in the (blue|red) room")\n',
    # argmax with n equal rows
    f'argmax(n=2)\n"{PAGE}\\nQ: who?\\nA: The speaker is[A]" where len(TOKENS(A)) < 10\n',
]


@pytest.mark.parametrize("source", QUERIES)
def test_argmax_with_drafts_writes_exactly_what_it_writes_without(fake, source):
    on, off = run(source, fake), run(source, fake, speculate=False)
    on, off = (on if isinstance(on, list) else [on]), (off if isinstance(off, list) else [off])
    for a, b in zip(on, off):
        assert a.prompt == b.prompt and a.variables == b.variables
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert [e.reason for e in a.trace.ends] == [e.reason for e in b.trace.ends]
        assert b.trace.drafted_tokens == 0
        t = a.trace
        assert 0 <= t.accepted_tokens <= t.drafted_tokens and t.rejected_tokens == t.drafted_tokens - t.accepted_tokens
        # what was fed is what the result kept (each token once) and the rejected drafts
        assert t.tokens_fed - t.rejected_tokens <= t.prompt_tokens + t.generated_tokens + t.forced_tokens
        assert t.forward_passes <= b.trace.forward_passes


COPYABLE = 'REGEX(A, r"[a-z ]+") and len(TOKENS(A)) == 20'  # text that can go into a query's prompt


def test_copying_takes_several_tokens_per_pass(fake):
    # The fake model's logits depend on the last two tokens: after "Once" it writes what it wrote
    # after "Once" before, so a page holding that text is one the model copies, as extraction does.
    first = run(f'"Once[A]" where {COPYABLE}\n', fake, speculate=False).variables["A"]
    source = f'"Notes: Once{first}\\nAgain: Once[A]" where {COPYABLE}\n'
    a, b = run(source, fake), run(source, fake, speculate=False)
    assert a.variables == b.variables and a.variables["A"] == first
    assert a.trace.accepted_tokens >= 15 and a.trace.rejected_tokens <= a.trace.accepted_tokens
    assert a.trace.forward_passes * 3 <= b.trace.forward_passes


COPIED_UNDER = [  # constraints that end or cut a value while the model copies: drafts kept in part
    'REGEX(A, r"[a-z ]+ neg[a-z ]*") and STOPS_AT(A, "qg") and len(TOKENS(A)) < 30',
    'REGEX(A, r"[a-z ]+ positive[a-z ]+") and STOPS_BEFORE(A, " neg") and len(TOKENS(A)) < 30',
    'REGEX(A, r"[a-z ]+ neg[a-z ]+") and len(TOKENS(A)) < 9',
    'REGEX(A, r"[a-z ]+ neg[a-z]+") and len(TOKENS(A)) < 25',
]


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("where", COPIED_UNDER)
def test_copies_cut_by_constraints_write_what_one_token_per_pass_writes(fake, where, n):
    first = run(f'"Once[A]" where {COPYABLE}\n', fake, speculate=False).variables["A"]
    # a second hole after the first: what a cut draft left in the row would change its text
    source = (f'argmax(n={n})\n"Notes: Once{first}\\nAgain: Once[A]. Once[B]" where {where} and '
              'REGEX(B, r"[a-z ]+ neg[a-z ]+") and len(TOKENS(B)) < 9\n')
    on, off = run(source, fake), run(source, fake, speculate=False)
    on, off = (on if n > 1 else [on]), (off if n > 1 else [off])
    for a, b in zip(on, off):
        assert a.prompt == b.prompt and a.variables == b.variables
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert [e.reason for e in a.trace.ends] == [e.reason for e in b.trace.ends]
        assert a.trace.accepted_tokens > 0 and a.trace.forward_passes < b.trace.forward_passes


def test_rows_hold_only_the_accepted_tokens(fake, monkeypatch):
    """After the run, each batch row holds exactly its prompt's tokens: rejected positions were truncated."""
    source = QUERIES[1]
    program = api.load(source)
    options = DecoderOptions()
    made = []  # the run lets go of its batch at the end: keep it here to look at
    monkeypatch.setattr(fake, "batch", lambda rows, batch=fake.batch: made.append(batch(rows)) or made[-1])
    runner = Runner(fake, api._index(fake), options)
    results = runner.run(api._starts(program, [{}, {}]))
    assert len(made) == 1 and runner._batch is None
    for row, branch in enumerate(runner.branches):
        assert made[0].tokens(row) == branch.prompt.tokens[:branch.prompt.fed]
        assert fake.decode(branch.prompt.tokens[:branch.prompt.fed]) in fake.decode(fake.bos_ids) + results[row].prompt
    assert sum(r.trace.rejected_tokens for r in results) > 0  # the test saw rejections to truncate


def test_run_batch_with_drafts_matches_one_at_a_time(fake):
    source = '"{PAGE}\\nThe {what} is[A]" where STOPS_AT(A, ".") and len(TOKENS(A)) < 20\n'.replace("{PAGE}", PAGE)
    rows = [{"what": "speaker"}, {"what": "meeting"}, {"what": "room"}]
    together = dict(api.run_batch(source, rows, model=fake, batch_size=3))
    alone = dict(api.run_batch(source, rows, model=fake, batch_size=1, speculate=False))
    assert [together[i].prompt for i in range(3)] == [alone[i].prompt for i in range(3)]


def test_speculate_is_an_option_checked_like_the_others(fake):
    with pytest.raises(lmql_lite.errors.QueryArgumentError, match="speculate must be True or False"):
        run('"a[A]"\n', fake, speculate="yes")
    r = run(f'argmax(speculate=False)\n"{PAGE}\\nThe speaker is[A]" where len(TOKENS(A)) < 8\n', fake)
    assert r.trace.drafted_tokens == 0


@pytest.mark.parametrize("draft", [3, 8, 21, 2])  # likely, unlikely, the likeliest, outside the mask
@pytest.mark.parametrize("options", [
    DecoderOptions(name="sample", temperature=1.0),
    DecoderOptions(name="sample", temperature=0.5, top_k=4),
])
def test_speculative_sampling_draws_from_the_distribution_sampling_does(draft, options):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(40).astype(np.float32) * 2
    allowed = np.zeros(40, bool)
    allowed[[1, 3, 5, 8, 13, 21, 34]] = True
    scores = decoders.masked(logits, Mask(allowed))
    sampler = decoders.Sample(DecoderOptions(**{**options.__dict__, "seed": 99}))
    n = 6000
    plain, drafted = np.zeros(40), np.zeros(40)
    for _ in range(n):
        plain[sampler.pick(scores)[0]] += 1
        tok, logprob = sampler.verify(scores, draft)
        drafted[tok] += 1
    expected = plain / n  # the decoder's own sampling, computed independently in test_decoders.py
    exact = np.exp(decoders.sampling_logits(scores, options) - decoders.sampling_logits(scores, options).max())
    exact /= exact.sum()
    assert drafted[exact == 0].sum() == 0
    std = np.sqrt(n * exact * (1 - exact))
    assert np.all(np.abs(drafted - n * exact) <= 4.5 * std + 1e-9)
    assert np.all(np.abs(plain - n * exact) <= 4.5 * std + 1e-9)
    assert logprob == pytest.approx(math.log(exact[tok]), rel=1e-4)
    assert expected[exact == 0].sum() == 0


def test_sampling_with_drafts_is_reproducible_and_follows_the_constraint(fake):
    first = run(f'"Once[A]" where {COPYABLE}\n', fake, speculate=False).variables["A"]
    source = f'sample(temperature=0.3, seed=7, speculate=True)\n"Notes: Once{first}\\nAgain: Once[A]" where {COPYABLE}\n'
    a, b = run(source, fake), run(source, fake)
    assert a.prompt == b.prompt and a.trace.drafted_tokens > 0
    assert len(fake.encode(a.variables["A"])) < 25 and set(a.variables["A"]) <= set("abcdefghijklmnopqrstuvwxyz ")


def test_beam_and_default_sampling_do_not_draft(fake):
    for head in ("beam(n=2)", "sample(seed=1)"):
        r = run(f'{head}\n"{PAGE}\\nThe speaker is[A]" where len(TOKENS(A)) < 6\n', fake)
        for result in (r if isinstance(r, list) else [r]):
            assert result.trace.drafted_tokens == 0


def test_token_events_with_drafts_are_those_without(fake):
    """Watched runs (`--trace`, the playground) draft too, and report every token as a one-token pass would."""
    first = run(f'"Once[A]" where {COPYABLE}\n', fake, speculate=False).variables["A"]
    program = api.load(f'"Notes: Once{first}\\nAgain: Once[A]" where {COPYABLE}\n')
    seen = {}
    for speculate_ in (None, False):
        got = []
        runner = Runner(fake, api._index(fake), DecoderOptions(speculate=speculate_), events=got.append, detail=3)
        (result,) = runner.run(api._starts(program, [{}]))
        seen[speculate_] = ([(e.id, e.how, round(e.p_raw or 0, 5), [a.id for a in e.top])
                             for e in got if e.type == "token"], result.trace.drafted_tokens)
    assert seen[None][0] == seen[False][0] and seen[None][1] > 0 and seen[False][1] == 0
