"""The classification data: an embedded, seeded sentiment task, or a real binary task via `datasets`.

Embedded task ("reviews"): one to three clauses about aspects of a place,

    "The staff was not friendly, the coffee was superb and the room could not have been more cramped."

label = 1 when most clauses are positive. A clause's polarity is its adjective's, flipped by a
negation ("was not X", "wasn't really X"); the intensifier "could not have been more X" contains
"not" yet keeps X's polarity, so counting negation words does not solve it. With
`heldout_words` the test split draws adjectives from a pool disjoint from the training splits:
a head can only generalise through what the LM already knows about word sentiment (the latent
knowledge Burns et al. elicit), which deeper (stronger) models represent better.

Table columns: `example_id, text, label, split` with split ∈ {weak_train, w2s_train, test}.
"""

from __future__ import annotations

import random

import pyarrow as pa

from w2s.config.classification import ClsDataConfig, HFClassificationData, ReviewTaskConfig

SPLITS = ("weak_train", "w2s_train", "test")
ASPECTS = [
    "the food", "the service", "the room", "the staff", "the price", "the view", "the music", "the sofa",
    "the wifi", "the coffee", "the location", "the checkout", "the breakfast", "the bed", "the pool",
    "the parking", "the menu", "the lobby", "the shower", "the waiter",
]
POSITIVE = [
    "great", "excellent", "friendly", "wonderful", "delicious", "spotless", "lovely", "superb", "fantastic",
    "pleasant", "charming", "quick", "comfortable", "amazing", "perfect", "helpful", "cozy", "fresh",
    "brilliant", "outstanding", "delightful", "impressive", "generous", "relaxing", "beautiful", "tasty",
    "clean", "cheerful", "enjoyable", "marvelous", "splendid", "terrific",
]
NEGATIVE = [
    "awful", "terrible", "rude", "dirty", "bland", "slow", "noisy", "overpriced", "cramped", "disappointing",
    "broken", "horrible", "filthy", "unpleasant", "stale", "greasy", "dreadful", "useless", "shabby",
    "mediocre", "disgusting", "gloomy", "unfriendly", "smelly", "lousy", "annoying", "boring", "miserable",
    "sticky", "chaotic", "pathetic", "unbearable",
]
NEGATIONS = ["was not {adj}", "wasn't really {adj}", "was never {adj}", "was far from {adj}"]
AFFIRMATIONS = ["was {adj}", "was really {adj}", "was very {adj}", "seemed {adj}"]
INTENSIFIER = "could not have been more {adj}"
OPENERS = ["", "Honestly, ", "Overall, ", "To be fair, ", "Well, "]


def word_pools(heldout: bool) -> dict[str, tuple[list[str], list[str]]]:
    """(positive, negative) adjectives per split; every fourth word is the test's when held out."""
    if not heldout:
        return {split: (POSITIVE, NEGATIVE) for split in SPLITS}
    test = ([w for i, w in enumerate(POSITIVE) if i % 4 == 3], [w for i, w in enumerate(NEGATIVE) if i % 4 == 3])
    train = ([w for i, w in enumerate(POSITIVE) if i % 4 != 3], [w for i, w in enumerate(NEGATIVE) if i % 4 != 3])
    return {"weak_train": train, "w2s_train": train, "test": test}


def make_review(rng: random.Random, cfg: ReviewTaskConfig, positive: list[str], negative: list[str]) -> tuple[str, int]:
    n_clauses = rng.choice([n for n in range(cfg.min_clauses, cfg.max_clauses + 1) if n % 2 == 1] or [cfg.min_clauses])
    aspects = rng.sample(ASPECTS, n_clauses)
    clauses, score = [], 0
    for aspect in aspects:
        polarity = rng.choice((1, -1))
        adj = rng.choice(positive if polarity > 0 else negative)
        draw = rng.random()
        if draw < cfg.p_negation:
            template, polarity = rng.choice(NEGATIONS), -polarity
        elif draw < cfg.p_negation + cfg.p_intensifier:
            template = INTENSIFIER
        else:
            template = rng.choice(AFFIRMATIONS)
        clauses.append(f"{aspect} {template.format(adj=adj)}")
        score += polarity
    if score == 0:  # an even clause count tied: the last clause decides
        score = polarity
    body = clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]
    opener = rng.choice(OPENERS)
    text = f"{opener}{body}." if opener else f"{body[0].upper()}{body[1:]}."
    return text, int(score > 0)


def split_sizes(cfg: ClsDataConfig) -> dict[str, int]:
    return {"weak_train": cfg.n_weak_train, "w2s_train": cfg.n_w2s_train, "test": cfg.n_test}


def synthetic_table(cfg: ClsDataConfig) -> pa.Table:
    rng = random.Random(cfg.seed)
    pools = word_pools(cfg.synthetic.heldout_words)
    rows: dict[str, list] = {"example_id": [], "text": [], "label": [], "split": []}
    seen: set[str] = set()
    for split, size in split_sizes(cfg).items():
        made, budget = 0, 100 * size
        while made < size:
            budget -= 1
            if budget == 0:
                raise ValueError(f"the review task cannot make {size} distinct {split} examples; lower data.n_*")
            text, label = make_review(rng, cfg.synthetic, *pools[split])
            if text in seen:  # no review in two splits, no duplicates within one
                continue
            seen.add(text)
            rows["example_id"].append(f"{split}-{made:06d}")
            rows["text"].append(text)
            rows["label"].append(label)
            rows["split"].append(split)
            made += 1
    return pa.table(rows)


def hf_table(cfg: ClsDataConfig) -> pa.Table:
    """A real binary task: shuffled with data.seed, then cut into the three splits."""
    import datasets

    hf: HFClassificationData = cfg.hf  # validated present
    data = datasets.load_dataset(hf.path, name=hf.name, data_files=hf.data_files, split=hf.split)
    sizes = split_sizes(cfg)
    need = sum(sizes.values())
    if len(data) < need:
        raise ValueError(f"{hf.path}: {len(data)} rows, the splits need {need}")
    data = data.shuffle(seed=cfg.seed).select(range(need))
    texts = [str(t) for t in data[hf.text_column]]
    labels = [int(v) for v in data[hf.label_column]]
    if set(labels) - {0, 1}:
        raise ValueError(f"{hf.label_column}: labels must be 0/1, got {sorted(set(labels))[:5]}")
    splits = [s for s, n in sizes.items() for _ in range(n)]
    ids = [f"{s}-{i:06d}" for s, n in sizes.items() for i in range(n)]
    return pa.table({"example_id": ids, "text": texts, "label": labels, "split": splits})


def build_table(cfg: ClsDataConfig) -> pa.Table:
    return synthetic_table(cfg) if cfg.source == "synthetic" else hf_table(cfg)
