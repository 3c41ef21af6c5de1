"""Attributions, the deletion test (benchmarks/RESULTS.md, "Token attributions"): on IMDB test reviews, delete
the k words each method ranks highest and measure the fall of the predicted class's probability (AOPC: the
mean over reviews of p(x) - p(x without those words)), for k = 1, 3, 5, 10. Methods, in one run on the same
model and reviews: Integrated Gradients (`load(DIR).explain`, words pushing toward the prediction first),
k random words (seeded), and the k words the last layer's [CLS] attention weighs most (averaged over heads).

    python benchmarks/aopc_imdb.py MODEL_DIR [--reviews 200] [--steps 32] [--out FILE.json]

Each review is cut to the words that fit the model's max length, so that the model reads every word and a
deleted word is one it read. Prints one JSON line: AOPC per method and k, the completeness errors'
distribution, seconds per review, the date and the CPU.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
import time
from pathlib import Path

import numpy as np

from bench import cpu_model, now

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imdb"
KS = (1, 3, 5, 10)


def _spans(tokenizer, text: str, max_length: int) -> list[tuple[int, int]]:
    """The words (character spans) of `text` whose tokens fit `max_length` with [CLS] and [SEP]."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans: dict[int, list[int]] = {}
    for position, (word, (start, end)) in enumerate(zip(enc.word_ids(), enc["offset_mapping"])):
        if position >= max_length - 2:
            break
        if word is not None:
            spans.setdefault(word, [start, end])[1] = end
    return [tuple(v) for v in spans.values()]


def _without(text: str, spans: list[tuple[int, int]], drop: set[int]) -> str:
    kept = [text[s:e] for i, (s, e) in enumerate(spans) if i not in drop]
    return " ".join(kept)


def _attention_order(model_dir: str, tokenizer, texts: list[str], spans: list[list[tuple[int, int]]]) -> list[list[int]]:
    """Words by the last layer's attention from [CLS], mean over heads, summed over a word's tokens."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, attn_implementation="eager").eval()
    orders = []
    for text in texts:
        enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=512)
        with torch.no_grad():
            att = model(**{k: v for k, v in enc.items() if k != "offset_mapping"}, output_attentions=True).attentions[-1]
        cls_row = att[0].mean(dim=0)[0].numpy()  # (tokens,)
        score: dict[int, float] = {}
        for position, word in enumerate(enc.word_ids()):
            if word is not None:
                score[word] = score.get(word, 0.0) + float(cls_row[position])
        orders.append(sorted(score, key=lambda w: -score[w]))
    return orders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--reviews", type=int, default=200)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from finetune_bert import load
    from finetune_bert.inference.reading import Reading

    clf = load(args.model, reading=Reading(long_texts="truncate"))
    with gzip.open(DATA / "test.csv.gz", "rt", encoding="utf-8", newline="") as handle:
        rows = random.Random(args.seed).sample(list(csv.DictReader(handle)), args.reviews)
    from finetune_bert.data.rows import clean_text
    full = [clean_text(r["text"]) for r in rows]
    spans = [_spans(clf.tokenizer, t, clf.max_length) for t in full]
    texts = [_without(t, s, set()) for t, s in zip(full, spans)]  # each review as the words the model reads
    spans = [_spans(clf.tokenizer, t, clf.max_length) for t in texts]
    started = time.time()
    explained = clf.explain(texts, steps=args.steps)
    ig_seconds = (time.time() - started) / len(texts)
    base = clf.predict_proba(texts)
    predicted = base.argmax(axis=1)
    ok = [i for i, e in enumerate(explained) if len(e.words) == len(spans[i])]
    rng = random.Random(args.seed)
    orders = {"integrated_gradients": {i: list(np.argsort([-w for _, w in explained[i].words], kind="stable"))
                                       for i in ok},
              "random": {i: rng.sample(range(len(spans[i])), len(spans[i])) for i in ok}}
    att = _attention_order(args.model, clf.tokenizer, [texts[i] for i in ok], [spans[i] for i in ok])
    orders["attention"] = dict(zip(ok, att))
    aopc = {}
    for method, order in orders.items():
        aopc[method] = {}
        for k in KS:
            variants = [_without(texts[i], spans[i], set(int(w) for w in order[i][:k])) for i in ok]
            after = clf.predict_proba(variants)
            drop = base[ok, predicted[ok]] - after[np.arange(len(ok)), predicted[ok]]
            aopc[method][k] = round(float(drop.mean()), 4)
    deltas = np.array([explained[i].delta for i in ok])
    result = {"benchmark": "aopc-imdb", "model": args.model, "reviews": len(ok), "skipped_word_mismatch": len(texts) - len(ok),
              "max_length": clf.max_length, "steps": args.steps, "aopc": aopc,
              "completeness_error": {"median": round(float(np.median(deltas)), 4),
                                     "p90": round(float(np.quantile(deltas, 0.9)), 4),
                                     "max": round(float(deltas.max()), 4),
                                     "converged_share": round(float(np.mean(deltas <= 0.05)), 4)},
              "ig_seconds_per_review": round(ig_seconds, 2), "date": now(), "cpu": cpu_model()}
    line = json.dumps(result)
    if args.out:
        Path(args.out).write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
