"""Human two-word node ids such as ``misty-owl``: easy to say, type and tell apart."""

from __future__ import annotations

import random

ADJECTIVES = (
    "amber", "bold", "brave", "bright", "calm", "clever", "cosmic", "crisp", "dusty", "eager",
    "fancy", "gentle", "golden", "happy", "hidden", "icy", "jolly", "keen", "lively", "lucky",
    "mellow", "misty", "nimble", "noble", "polar", "proud", "quick", "quiet", "rapid", "rusty",
    "shy", "silent", "silver", "sly", "snowy", "solar", "steady", "sunny", "swift", "tidy",
    "vivid", "warm", "wild", "windy", "wise", "witty", "young", "zesty",
)  # fmt: skip
ANIMALS = (
    "badger", "bat", "bear", "beaver", "bison", "crane", "crow", "deer", "dove", "eagle",
    "egret", "elk", "falcon", "ferret", "finch", "fox", "gecko", "goose", "hare", "hawk",
    "heron", "ibis", "jay", "koala", "lark", "lemur", "lynx", "marten", "mole", "moose",
    "newt", "otter", "owl", "panda", "puffin", "quail", "raven", "robin", "seal", "sparrow",
    "stork", "swan", "tiger", "toad", "trout", "viper", "wolf", "wren",
)  # fmt: skip


def new_node_name(taken: set[str], rng: random.Random | None = None) -> str:
    """A two-word id not in ``taken``; a numeric suffix is added only if words run out."""
    rng = rng or random.SystemRandom()
    for _ in range(200):
        name = f"{rng.choice(ADJECTIVES)}-{rng.choice(ANIMALS)}"
        if name not in taken:
            return name
    base = f"{rng.choice(ADJECTIVES)}-{rng.choice(ANIMALS)}"
    suffix = 2
    while f"{base}-{suffix}" in taken:
        suffix += 1
    return f"{base}-{suffix}"
