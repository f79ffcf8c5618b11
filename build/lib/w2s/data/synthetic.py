"""The embedded task: deterministic, seeded *controlled summarisation* of Reddit-style posts.

Each post carries four key facts (who, problem, duration, question) in varied sentence templates,
padded with irrelevant filler sentences. The prompt follows the TL;DR format of the paper's task:

    SUBREDDIT: r/<sub>\nTITLE: <title>\nPOST: <post>\nTL;DR:

and a response is one line starting with a space. `meta` (JSON) keeps the facts and the filler so the
gold reward (w2s/rewards.py) can score any response. Preference pairs come from a programmatic
candidate summariser of varied quality, labelled as in paper §9.1: p(y1 ≻ y2) = σ(r(y1) − r(y2)).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass

SUBREDDITS = ["relationships", "relationship_advice", "AskReddit", "personalfinance", "legaladvice"]
WHO = [
    "my roommate", "my boss", "my sister", "my boyfriend", "my girlfriend", "my neighbour",
    "my coworker", "my best friend", "my landlord", "my brother", "my mother in law", "my teammate",
]
PROBLEM = [
    "keeps borrowing money without paying it back", "reads my private messages",
    "plays loud music every night", "takes credit for my work", "cancels plans at the last minute",
    "never cleans the kitchen", "lies about small things", "ignores my texts for days",
    "invites strangers over without asking", "criticises my cooking in front of guests",
    "uses my car without asking", "shows up late to everything",
]
DURATION = [
    "for two weeks", "for three months", "for almost a year", "since last summer",
    "since we moved in together", "for six months", "since the new year", "for over two years",
]
QUESTION = [
    "should I confront them", "how do I bring it up", "am I overreacting", "should I move out",
    "is this normal", "how do I set boundaries", "should I end things", "what would you do",
]
WHO_SENTENCES = [
    "So this is about {who}.", "I need advice about {who}.", "Background: {who} and I have known each other a while.",
    "This concerns {who}.",
]
PROBLEM_SENTENCES = [
    "The issue is that {who} {problem}.", "Basically {who} {problem}.", "Long story short, {who} {problem}.",
    "What bothers me is that {who} {problem}.",
]
DURATION_SENTENCES = [
    "This has been going on {duration}.", "It has been like this {duration}.", "I have put up with it {duration}.",
]
QUESTION_SENTENCES = ["So, {question}?", "My question is: {question}?", "Reddit, {question}?"]
FILLER = [
    "I had a really long day at work today.", "The weather here has been terrible all week.",
    "We both like hiking and old movies.", "I am writing this on my phone so sorry for formatting.",
    "My cat knocked over a plant while I was typing this.", "I started a new job last month and it is going fine.",
    "We live in a small apartment near the train station.", "I usually go to the gym in the mornings.",
    "Some of my friends think I should just let it go.", "I tried a new pasta recipe yesterday and it was great.",
    "Throwaway account for obvious reasons.", "English is not my first language.",
    "My parents are visiting next weekend.", "I have been trying to sleep more lately.",
]
FACT_KEYS = ("who", "problem", "duration", "question")
STOPWORDS = {
    "a", "an", "the", "my", "to", "it", "i", "is", "of", "in", "for", "and", "do", "how", "we", "them",
    "this", "that", "at", "on", "me", "be", "with", "over", "without", "up", "what", "would", "you", "new",
}


def content_words(text: str) -> list[str]:
    return [w for w in words(text) if w not in STOPWORDS]


def words(text: str) -> list[str]:
    cleaned = "".join(ch.lower() if ch.isalnum() or ch == "'" else " " for ch in text)
    return cleaned.split()


@dataclass(frozen=True)
class Post:
    prompt: str
    facts: dict[str, str]
    filler: list[str]
    ideal: str

    @property
    def meta(self) -> str:
        return json.dumps({"facts": self.facts, "filler": self.filler, "ideal": self.ideal}, sort_keys=True)


def make_post(rng: random.Random, min_filler: int, max_filler: int) -> Post:
    facts = {
        "who": rng.choice(WHO), "problem": rng.choice(PROBLEM),
        "duration": rng.choice(DURATION), "question": rng.choice(QUESTION),
    }
    fact_sentences = [
        rng.choice(WHO_SENTENCES).format(**facts),
        rng.choice(PROBLEM_SENTENCES).format(**facts),
        rng.choice(DURATION_SENTENCES).format(**facts),
    ]
    filler = rng.sample(FILLER, rng.randint(min_filler, max_filler))
    body = fact_sentences + filler
    rng.shuffle(body)
    body.append(rng.choice(QUESTION_SENTENCES).format(**facts))
    age, sex = rng.randint(18, 45), rng.choice("MF")
    post = f"I ({age}{sex}) " + " ".join(body)
    title = f"{facts['who'].capitalize()} {facts['problem']}, {facts['question']}?"
    if rng.random() < 0.5:  # half the titles withhold the facts, so the post must be read
        title = f"Need advice about {facts['who']}"
    prompt = f"SUBREDDIT: r/{rng.choice(SUBREDDITS)}\nTITLE: {title}\nPOST: {post}\nTL;DR:"
    ideal = f" {facts['who']} {facts['problem']} {facts['duration']}, {facts['question']}?"
    return Post(prompt=prompt, facts=facts, filler=filler, ideal=ideal)


def candidate_summary(rng: random.Random, post: Post) -> str:
    """A summary of random quality: drops facts, copies filler, rambles, repeats itself."""
    facts = post.facts
    parts = []
    if rng.random() < 0.85:
        parts.append(f"{facts['who']} {facts['problem']}" if rng.random() < 0.8 else facts["who"])
    if rng.random() < 0.6:
        parts.append(facts["duration"])
    if rng.random() < 0.3 and post.filler:
        parts.append(rng.choice(post.filler).rstrip(".").lower())
    if rng.random() < 0.15 and post.filler:
        parts.append(rng.choice(post.filler).rstrip(".").lower())
    text = ", ".join(parts) if parts else rng.choice(post.filler).rstrip(".").lower()
    if rng.random() < 0.7:
        text += f", {facts['question']}?"
    if rng.random() < 0.1:
        text = f"{text} {text}"  # the degenerate repeat of a weak model
    return " " + text


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))
