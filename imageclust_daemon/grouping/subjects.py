"""What an album shows, in one everyday word, offline: the CLIP text tower against a fixed
vocabulary. The core (`subject_of`) is pure; `word_vectors` embeds the vocabulary once per
model and keeps it in the state database.

Each photo's word is the vocabulary word its embedding is closest to, asked as CLIP's
zero-shot classification asks ("a photo of a dog."). An album's subject is the word most
of its photos share: more than half of them (`SUBJECT_SHARE`), so a word is said only
when it clearly wins and is true of most of the album. Otherwise it has none. Words are
kept few and apart (no "puppy" beside "dog") so that photos of one thing agree on a word.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

PROMPT = "a photo of {}."  # CLIP's zero-shot template (Radford et al. 2021)
SUBJECT_SHARE = 0.5  # a subject is the word of more than this share of an album's photos
# Bump when the vocabulary or the prompt changes: cached vectors are keyed by it.
VOCABULARY_VERSION = 1

# Everyday subjects of personal photos, one word or a short phrase each, as they read in
# a title ("Beach", "Birthday party").
SUBJECTS: tuple[str, ...] = (
    # people and gatherings
    "baby", "children", "family", "couple", "friends", "crowd", "portrait",
    "selfie", "wedding", "birthday party", "party", "graduation", "concert", "festival",
    "parade", "picnic", "barbecue", "dinner party", "meeting", "classroom", "playground",
    "sports match", "football", "basketball", "tennis", "golf", "swimming", "surfing",
    "skiing", "snowboarding", "cycling", "running", "hiking", "climbing", "camping",
    "fishing", "sailing", "kayaking", "horse riding", "yoga", "dancing", "theatre",
    "museum", "art gallery", "zoo", "aquarium", "amusement park", "circus", "market",
    "shopping", "restaurant", "cafe", "bar", "kitchen", "living room", "bedroom",
    "bathroom", "garden", "backyard", "office", "desk", "library", "school", "church",
    "temple", "mosque", "castle", "palace", "ruins", "monument", "statue", "tower",
    "bridge", "skyscraper", "city street", "skyline", "old town", "village", "farm",
    "barn", "harbour", "airport", "train station", "subway", "road trip", "highway",
    # nature and places
    "beach", "sea", "coast", "cliffs", "island", "lake", "river", "waterfall",
    "mountains", "hills", "valley", "forest", "jungle", "desert", "canyon", "cave",
    "volcano", "glacier", "snow", "ice", "field", "meadow", "vineyard", "orchard",
    "park", "sunset", "sunrise", "night sky", "stars", "moon", "clouds", "rain",
    "storm", "fog", "rainbow", "autumn leaves", "flowers", "rose", "tulips",
    "sunflowers", "cactus", "tree", "palm trees", "moss", "mushrooms", "rocks",
    "sand dunes", "underwater", "coral reef",
    # animals
    "dog", "cat", "horse", "cow", "sheep", "goat", "pig", "chicken",
    "duck", "swan", "goose", "bird", "parrot", "owl", "eagle", "seagull", "pigeon",
    "penguin", "flamingo", "butterfly", "bee", "spider", "insect", "fish", "shark",
    "dolphin", "whale", "seal", "turtle", "frog", "lizard", "snake", "crocodile",
    "rabbit", "hamster", "squirrel", "deer", "fox", "wolf", "bear", "lion", "tiger",
    "leopard", "elephant", "giraffe", "zebra", "monkey", "gorilla", "kangaroo", "koala",
    "camel",
    # food and drink
    "food", "breakfast", "lunch", "dessert", "cake", "bread", "pizza",
    "pasta", "burger", "sushi", "salad", "soup", "fruit", "vegetables", "cheese",
    "meat", "seafood", "ice cream", "chocolate", "cookies", "coffee", "tea", "wine",
    "beer", "cocktails",
    # things
    "car", "vintage car", "motorcycle", "bicycle", "bus", "train", "tram", "boat",
    "ship", "airplane", "helicopter", "truck", "tractor", "house", "apartment",
    "interior", "furniture", "christmas tree", "halloween", "fireworks",
    "candles", "balloons", "gifts", "toys", "lego", "teddy bear", "books", "painting",
    "drawing", "sculpture", "graffiti", "street art", "poster", "sign", "map",
    "document", "receipt", "screenshot", "whiteboard", "computer", "phone", "camera",
    "television", "video game", "guitar", "piano", "drums", "musical instruments",
    "clothes", "shoes", "jewellery", "watch", "handbag", "hat", "costume", "uniform",
    "tools", "construction site", "workshop", "garage", "car park", "swimming pool",
    "stadium", "gym", "hospital", "tent", "campfire", "fireplace", "window", "door",
    "stairs", "architecture", "aerial view", "lighthouse", "windmill", "fountain",
    "pier", "boardwalk", "skate park", "ski resort", "hotel",
    "text", "chessboard", "pattern", "texture", "abstract art", "wallpaper",
)  # fmt: skip


def subject_of(x: np.ndarray, words: np.ndarray, vocabulary: Sequence[str]) -> str | None:
    """The word most of an album's photos (rows of `x`, L2-normalized) are closest to of
    the vocabulary's `words` (rows, L2-normalized), if more than SUBJECT_SHARE of them
    are; else None."""
    if not len(x) or not len(words):
        return None
    best = np.argmax(x @ words.T, axis=1)
    counts = np.bincount(best, minlength=len(vocabulary))
    top = int(np.argmax(counts))
    if counts[top] <= SUBJECT_SHARE * len(x):
        return None
    return vocabulary[top]


def title_word(subject: str) -> str:
    """ "birthday party" -> "Birthday party": a subject as a title starts."""
    return subject[:1].upper() + subject[1:]


def word_vectors(
    cached: Callable[[], np.ndarray | None],
    embed: Callable[[list[str]], np.ndarray],
    keep: Callable[[np.ndarray], None],
) -> np.ndarray:
    """The vocabulary's vectors [len(SUBJECTS), D]: `cached()` when the store has them,
    else `embed` (the text tower) the prompts once and `keep` them."""
    found = cached()
    if found is not None and len(found) == len(SUBJECTS):
        return found
    vectors = embed([PROMPT.format(word) for word in SUBJECTS]).astype(np.float32)
    keep(vectors)
    return vectors
