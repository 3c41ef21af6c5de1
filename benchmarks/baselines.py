"""The baseline a user would try first: scikit-learn TF-IDF with a linear model, one per task kind, on the
splits our tool is measured on (../shared/data). It prints one JSON line per dataset and setting (the default
C or alpha, then a chosen one) and a markdown table.

    python benchmarks/baselines.py {goemotions,imdb-ratings,mrpc,sst2,all} [--max-train-samples N] [--seed 42]

- goemotions (multi-label, 28 labels): one-vs-rest LogisticRegression, class_weight='balanced', C chosen on
  validation macro-F1; test macro-F1 at 0.5 and with per-label thresholds tuned on validation, micro-F1.
- imdb-ratings (regression on the 1-4 / 7-10 star rating): Ridge, alpha by 5-fold CV on train; test RMSE, MAE,
  R2, Pearson, Spearman, and the share within one star (raw prediction, and rounded and clipped to 1..10).
- mrpc (sentence pairs): |a-b| and a*b of the two TF-IDF vectors plus their cosine, LogisticRegression with C
  by 5-fold CV on train; validation accuracy and F1 of class 1 (paraphrase).
- sst2 (single-label): LogisticRegression, C by 5-fold CV on train; validation accuracy.

mrpc and sst2 have no labelled test split, so their validation split is the one evaluated and is never used
to choose anything. --max-train-samples N keeps the rows our tool keeps (data.splits.sample_mask): the first N
of a seeded permutation, taken as a mask, so the kept rows stay in file order. Only train is sampled, as in
the tool.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse, stats
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, mean_squared_error, r2_score
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import MultiLabelBinarizer

from bench import cpu_model, now

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
DATASETS = ("goemotions", "imdb-ratings", "mrpc", "sst2")
C_GRID = (0.25, 1.0, 4.0, 16.0, 64.0)  # LogisticRegression on mrpc and sst2: cheap fits, so a wide grid
C_GRID_MULTI = (0.5, 1.0, 2.0, 4.0, 8.0)  # GoEmotions: each point is 28 fits, and large C fits slowest
ALPHA_GRID = (0.25, 0.5, 1.0, 2.0)  # Ridge on IMDB: small alphas did best in a first look
THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)


# ---------------------------------------------------------------- data

def read(name: str, split: str) -> pd.DataFrame:
    # keep_default_na=False: a text such as "NA" or "null" is a text, not a missing value (SOURCE.md says so)
    return pd.read_csv(DATA / name / f"{split}.csv.gz", keep_default_na=False)


def sample_rows(frame: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """The tool's seeded_sample: a boolean mask from default_rng(seed).permutation(size)[:n], file order kept."""
    if n is None or n >= len(frame):
        return frame
    keep = np.zeros(len(frame), dtype=bool)
    keep[np.random.default_rng(seed).permutation(len(frame))[:n]] = True
    return frame[keep].reset_index(drop=True)


def tfidf(ngrams: tuple[int, int] = (1, 2), min_df: int = 1) -> TfidfVectorizer:
    # sublinear tf: a word said five times is not five times the evidence; the usual first choice
    return TfidfVectorizer(ngram_range=ngrams, sublinear_tf=True, min_df=min_df, dtype=np.float32)


def grams(ngrams: tuple) -> str:
    return f"{ngrams[0]}-{ngrams[1]} grams" if ngrams[0] != ngrams[1] else f"{ngrams[0]}-grams"


def timed(fn, *args):
    started = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - started


def linear_lr(c: float, seed: int, balanced: bool = False) -> LogisticRegression:
    # liblinear: fast on sparse TF-IDF with one core; the machine's 2 cores are shared, so no n_jobs
    return LogisticRegression(C=c, solver="liblinear", class_weight="balanced" if balanced else None,
                              random_state=seed, max_iter=1000)


# ---------------------------------------------------------------- choosing and fitting

def cv_choice(make, grid: tuple, x, y, scoring: str, seed: int) -> tuple[float, dict]:
    """The grid value with the best 5-fold CV score on train (the evaluated split is never looked at), and all
    scores. The vectorizer was fit on all of train first: its IDF sees the held-out fold, which is cheap and
    moves a linear model little; refitting it per fold would cost minutes on IMDB for nothing visible."""
    folds = (StratifiedKFold if scoring == "accuracy" else KFold)(5, shuffle=True, random_state=seed)
    search = GridSearchCV(make(grid[0]), {make.param: list(grid)}, scoring=scoring, cv=folds, refit=False)
    search.fit(x, y)
    scores = {f"{make.param}={v}": round(float(s), 4) for v, s in zip(grid, search.cv_results_["mean_test_score"])}
    return search.best_params_[make.param], scores


def two_settings(task: dict, seed: int) -> list[dict]:
    """The default a user would try first, then the value 5-fold CV on train picks; each fit timed."""
    make = task["make"]
    best, scores = cv_choice(make, task["grid"], task["x"], task["y"], task["scoring"], seed)
    rows = []
    for setting, value in (("default", make.default), ("5-fold CV on train", best)):
        model, fit_s = timed(make(value).fit, task["x"], task["y"])
        rows.append({"setting": setting, "chosen": {make.param: value}, "fit_s": fit_s,
                     "metrics": task["metrics"](task["y_eval"], model.predict(task["x_eval"])),
                     **({"cv": scores} if "CV" in setting else {})})
    return rows


def factory(build, param: str, default: float):
    """A callable value -> fresh model, carrying the name of its one hyperparameter and the sklearn default."""
    build.param, build.default = param, default
    return build


# ---------------------------------------------------------------- goemotions

def best_thresholds(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per label, the threshold on THRESHOLDS with the best validation F1 (ties: the lowest)."""
    chosen = np.empty(y.shape[1])
    for j in range(y.shape[1]):
        f1s = [f1_score(y[:, j], scores[:, j] >= t, zero_division=0) for t in THRESHOLDS]
        chosen[j] = THRESHOLDS[int(np.argmax(f1s))]
    return chosen


def multilabel_metrics(y_test, scores, thresholds) -> dict:
    at_half, tuned = scores >= 0.5, scores >= thresholds
    return {"test_macro_f1@0.5": f1_score(y_test, at_half, average="macro", zero_division=0),
            "test_macro_f1_tuned": f1_score(y_test, tuned, average="macro", zero_division=0),
            "test_micro_f1@0.5": f1_score(y_test, at_half, average="micro", zero_division=0),
            "test_micro_f1_tuned": f1_score(y_test, tuned, average="micro", zero_division=0)}


def goemotions(train: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame, seed: int, ngrams: tuple) -> dict:
    """C on validation macro-F1 at 0.5 (GoEmotions has a validation split of its own, so no CV), thresholds
    per label on validation too; test is scored for every C but only read for the chosen one and C=1."""
    binarizer = MultiLabelBinarizer()
    y_train = binarizer.fit_transform(train["labels"].str.split(";"))
    y_val, y_test = (binarizer.transform(f["labels"].str.split(";")) for f in (val, test))
    vectorizer = tfidf(ngrams)
    x_train, vec_s = timed(vectorizer.fit_transform, train["text"])
    x_val, x_test = vectorizer.transform(val["text"]), vectorizer.transform(test["text"])
    fits = {}
    for c in C_GRID_MULTI:
        model, fit_s = timed(OneVsRestClassifier(linear_lr(c, seed, balanced=True)).fit, x_train, y_train)
        val_scores = model.predict_proba(x_val)
        fits[c] = {"val_macro_f1@0.5": f1_score(y_val, val_scores >= 0.5, average="macro", zero_division=0),
                   "fit_s": fit_s, "val_scores": val_scores, "test_scores": model.predict_proba(x_test)}
    best = max(fits, key=lambda k: fits[k]["val_macro_f1@0.5"])
    rows = []
    for setting, c in (("default", 1.0), ("validation macro-F1@0.5", best)):
        fit = fits[c]
        metrics = multilabel_metrics(y_test, fit["test_scores"], best_thresholds(y_val, fit["val_scores"]))
        rows.append({"setting": setting, "chosen": {"C": c}, "fit_s": fit["fit_s"],
                     "metrics": {**metrics, "val_macro_f1@0.5": fit["val_macro_f1@0.5"]}})
    rows[-1]["search"] = {f"C={k}": round(float(v["val_macro_f1@0.5"]), 4) for k, v in fits.items()}
    rows[-1]["search_fit_s"] = sum(v["fit_s"] for v in fits.values())
    return {"rows": rows, "vectorize_s": vec_s, "eval": f"test ({len(test)})", "labels": len(binarizer.classes_),
            "model": f"TF-IDF {grams(ngrams)}, sublinear tf + one-vs-rest LogisticRegression (liblinear, balanced)"}


# ---------------------------------------------------------------- imdb-ratings

def rating_metrics(true: np.ndarray, pred: np.ndarray) -> dict:
    """RMSE etc. on the raw prediction; 'within one star' both raw and after rounding and clipping to 1..10."""
    rounded = np.clip(np.rint(pred), 1, 10)
    return {"test_rmse": float(np.sqrt(mean_squared_error(true, pred))),
            "test_mae": mean_absolute_error(true, pred), "test_r2": r2_score(true, pred),
            "test_pearson": stats.pearsonr(true, pred)[0], "test_spearman": stats.spearmanr(true, pred)[0],
            "test_within1_raw": float(np.mean(np.abs(pred - true) <= 1)),
            "test_within1_rounded": float(np.mean(np.abs(rounded - true) <= 1)),
            "test_exact_rounded": float(np.mean(rounded == true))}


def imdb_ratings(train: pd.DataFrame, test: pd.DataFrame, seed: int, ngrams: tuple) -> dict:
    # min_df=2: reviews are long, so 1-2 grams seen once run to 1.5M features that only add memory
    vectorizer = tfidf(ngrams, min_df=2)
    x_train, vec_s = timed(vectorizer.fit_transform, train["text"])
    task = {"make": factory(lambda a: Ridge(alpha=a), "alpha", 1.0), "grid": ALPHA_GRID,
            "x": x_train, "y": train["rating"].to_numpy(float), "scoring": "neg_root_mean_squared_error",
            "x_eval": vectorizer.transform(test["text"]), "y_eval": test["rating"].to_numpy(float),
            "metrics": rating_metrics}
    return {"rows": two_settings(task, seed), "vectorize_s": vec_s, "eval": f"test ({len(test)})",
            "features": x_train.shape[1], "model": f"TF-IDF {grams(ngrams)}, sublinear tf, min_df 2 + Ridge"}


# ---------------------------------------------------------------- mrpc and sst2

def class_metrics(true, pred) -> dict:
    return {"val_accuracy": accuracy_score(true, pred), "val_f1_pos": f1_score(true, pred)}


def pair_features(vectorizer: TfidfVectorizer, frame: pd.DataFrame) -> sparse.csr_matrix:
    """|a-b| and a*b (a, b: the two sentences' L2-normed TF-IDF rows), and cos(a, b) = sum(a*b) as one column."""
    a, b = vectorizer.transform(frame["sentence1"]), vectorizer.transform(frame["sentence2"])
    product = a.multiply(b).tocsr()
    cosine = sparse.csr_matrix(np.asarray(product.sum(axis=1)))
    return sparse.hstack([abs(a - b), product, cosine]).tocsr()


def mrpc(train: pd.DataFrame, val: pd.DataFrame, seed: int, ngrams: tuple) -> dict:
    # one vocabulary over both columns: the same word must be the same feature in a and in b
    vectorizer = tfidf(ngrams)
    _, vec_s = timed(vectorizer.fit, pd.concat([train["sentence1"], train["sentence2"]]))
    task = {"make": factory(lambda c: linear_lr(c, seed), "C", 1.0), "grid": C_GRID, "scoring": "accuracy",
            "x": pair_features(vectorizer, train), "y": train["label"].to_numpy(),
            "x_eval": pair_features(vectorizer, val), "y_eval": val["label"].to_numpy(), "metrics": class_metrics}
    return {"rows": two_settings(task, seed), "vectorize_s": vec_s, "eval": f"validation ({len(val)})",
            "model": f"TF-IDF {grams(ngrams)}, sublinear tf; abs(a-b), a*b, cosine + LogisticRegression (liblinear)"}


def sst2(train: pd.DataFrame, val: pd.DataFrame, seed: int, ngrams: tuple) -> dict:
    vectorizer = tfidf(ngrams)
    x_train, vec_s = timed(vectorizer.fit_transform, train["text"])
    task = {"make": factory(lambda c: linear_lr(c, seed), "C", 1.0), "grid": C_GRID, "scoring": "accuracy",
            "x": x_train, "y": train["label"].to_numpy(), "x_eval": vectorizer.transform(val["text"]),
            "y_eval": val["label"].to_numpy(), "metrics": class_metrics}
    return {"rows": two_settings(task, seed), "vectorize_s": vec_s, "eval": f"validation ({len(val)})",
            "model": f"TF-IDF {grams(ngrams)}, sublinear tf + LogisticRegression (liblinear)"}


# ---------------------------------------------------------------- running and reporting

def run(name: str, n: int | None, seed: int, ngrams: tuple) -> list[dict]:
    """One result per setting (the default hyperparameter, then the chosen one), timings rounded."""
    train = sample_rows(read(name, "train"), n, seed)
    started = time.perf_counter()
    if name == "goemotions":
        result = goemotions(train, read(name, "validation"), read(name, "test"), seed, ngrams)
    elif name == "imdb-ratings":
        result = imdb_ratings(train, read(name, "test"), seed, ngrams)
    elif name == "mrpc":
        result = mrpc(train, read(name, "validation"), seed, ngrams)
    else:
        result = sst2(train, read(name, "validation"), seed, ngrams)
    total = round(time.perf_counter() - started, 2)
    shared = {k: v for k, v in result.items() if k != "rows"}
    rows = []
    for row in result["rows"]:
        row["metrics"] = {k: round(float(v), 4) for k, v in row["metrics"].items()}
        row.update({k: round(row[k], 2) for k in ("fit_s", "search_fit_s") if k in row})
        rows.append({"dataset": name, "train_rows": len(train), "max_train_samples": n, "seed": seed, **row,
                     **shared, "vectorize_s": round(shared["vectorize_s"], 2), "total_s": total})
    return rows


def summary(result: dict) -> str:
    """The headline numbers in words, percentages where the issue states them so."""
    m = result["metrics"]
    if result["dataset"] == "goemotions":
        return (f"macro-F1@0.5 {m['test_macro_f1@0.5']:.3f}, macro-F1 tuned thr. {m['test_macro_f1_tuned']:.3f}, "
                f"micro-F1@0.5 {m['test_micro_f1@0.5']:.3f} (tuned thr. {m['test_micro_f1_tuned']:.3f})")
    if result["dataset"] == "imdb-ratings":
        return (f"RMSE {m['test_rmse']:.3f}, MAE {m['test_mae']:.3f}, R2 {m['test_r2']:.3f}, "
                f"Pearson {m['test_pearson']:.3f}, Spearman {m['test_spearman']:.3f}, "
                f"within 1 star {100 * m['test_within1_raw']:.1f}% raw / "
                f"{100 * m['test_within1_rounded']:.1f}% rounded, exact {100 * m['test_exact_rounded']:.1f}%")
    return f"accuracy {100 * m['val_accuracy']:.2f}%, F1 (label 1) {100 * m['val_f1_pos']:.2f}"


def table(results: list[dict]) -> str:
    lines = ["| dataset | train rows | evaluated on | C or alpha (chosen by) | metrics | vectorize s | fit s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        chosen = ", ".join(f"{k}={v:g}" for k, v in r["chosen"].items())
        fit = f"{r['fit_s']:.1f}" + (f" (all {len(r['search'])} C: {r['search_fit_s']:.0f})" if "search" in r else "")
        lines.append(f"| {r['dataset']} | {r['train_rows']:,} | {r['eval']} | {chosen} ({r['setting']}) | "
                     f"{summary(r)} | {r['vectorize_s']:.1f} | {fit} |")
    models = {r["dataset"]: r["model"] for r in results}  # the same for both settings of a dataset
    return "\n".join(lines + [""] + [f"- {name}: {model}" for name, model in models.items()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=(*DATASETS, "all"))
    parser.add_argument("--max-train-samples", type=int, default=None,
                        help="the first N train rows after the tool's seeded shuffle (file order kept)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--ngrams", default="1,2", help="word n-gram range, low,high (the variants in RESULTS.md)")
    args = parser.parse_args()
    ngrams = tuple(int(v) for v in args.ngrams.split(","))
    names = DATASETS if args.dataset == "all" else (args.dataset,)
    results = []
    for name in names:
        for row in run(name, args.max_train_samples, args.seed, ngrams):
            results.append(row)
            print(json.dumps(row), flush=True)  # each line as soon as it is done: GoEmotions takes minutes
    print(f"\n{now()}; CPU {cpu_model()}; command: python benchmarks/baselines.py {args.dataset}"
          + (f" --max-train-samples {args.max_train_samples}" if args.max_train_samples else "")
          + f" --seed {args.seed}" + (f" --ngrams {args.ngrams}" if ngrams != (1, 2) else "") + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
