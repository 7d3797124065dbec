"""A small byte-level BPE vocabulary in CLIP's format, for the tiny model's CLIPTokenizer.

CLIP's tokenizer splits text into words, maps every byte to a printable character, marks the last
character of each word with ``</w>`` and then applies learned merges, most frequent pair first. Because
the 256 byte symbols (and their ``</w>`` forms) are always in the vocabulary, *any* string tokenizes:
a DreamBooth identifier such as ``sks`` or a Textual Inversion placeholder becomes a few known pieces,
never a shared ``<unk>``. SD's vocabulary has 49,408 entries; ours keeps the same format with about a
thousand, learned here from the toy world's words plus common English prompt words.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path


from ..data import toyworld

BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# Common words of image prompts, so a learner's prompt is made of whole tokens, as in SD.
PROMPT_WORDS = """
a an the of on in with and or at by to from for is are this that it its as be not no
photo picture painting drawing sketch image art style render illustration portrait landscape
shape object thing toy dog cat person man woman girl boy face house car tree flower sky sea
background foreground scene light dark bright colour color colours colors pattern texture
big small large tiny little round sharp soft blurry blurred smooth flat glossy shiny matte
left right top bottom middle center centre corner edge front back above below near far
one two three four five many several some
sks zwx ohwx skz token concept subject class instance prior
high quality detailed simple clean photorealistic cartoon anime watercolor oil pencil
striped stripes dotted dots outlined outline shaded shading checkered checkerboard gradient
pink cyan magenta brown teal white black gray grey red green blue yellow purple orange
circle square triangle diamond star cross heart ring hexagon
"""


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars)))


def word_counts() -> Counter:
    """Training corpus for the merges: toy-world words weighted high, prompt words once each."""
    counts: Counter = Counter(PROMPT_WORDS.split())
    for values in toyworld.ATTRIBUTES.values():
        for value in values:
            counts[value] += 50
    for word in "a on background shape".split():
        counts[word] += 100
    return counts


def train_bpe(counts: Counter, num_merges: int) -> list[tuple[str, str]]:
    """Learn `num_merges` BPE merges from word counts: repeatedly join the most frequent adjacent pair."""
    byte_char = bytes_to_unicode()
    words = {}
    for word, count in counts.items():
        symbols = [byte_char[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        words[tuple(symbols)] = count
    merges = []
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for symbols, count in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))  # ties broken deterministically
        merges.append(best)
        joined = best[0] + best[1]
        new_words = {}
        for symbols, count in words.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            new_words[tuple(out)] = count
        words = new_words
    return merges


def write_clip_vocab(folder: str | Path, num_merges: int = 2000) -> Path:
    """Write `vocab.json` and `merges.txt` in CLIP's format; `CLIPTokenizer.from_pretrained(folder)` reads them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = train_bpe(word_counts(), num_merges)
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab_list))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    return folder
