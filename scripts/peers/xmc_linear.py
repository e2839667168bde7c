"""PECOS XR-Linear and napkinXC PLT on TF-IDF features: top-k predictions for xmr's quality benchmark.

Runs in its own environment (.venv-peers: libpecos pins numpy<2 and scipy<1.14), driven by
scripts/bench_quality.py; exchanges data through files only:

    .venv-peers/bin/python scripts/peers/xmc_linear.py --train TRAIN.jsonl --test TEST.jsonl --labels 90 --out DIR

writes DIR/{pecos,napkinxc}.npy ((test, k) int64 label ids, -1 padded) and DIR/timings.json.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer


def read(path):
    texts, labels = [], []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            texts.append(record["text"])
            labels.append(record["labels"])
    return texts, labels


def top_k_rows(matrix, k):
    """Top-k column ids per row of a sparse score matrix, best first, -1 padded."""
    matrix = matrix.tocsr()
    out = np.full((matrix.shape[0], k), -1, dtype=np.int64)
    for row in range(matrix.shape[0]):
        start, end = matrix.indptr[row], matrix.indptr[row + 1]
        order = np.argsort(-matrix.data[start:end], kind="stable")[:k]
        out[row, :len(order)] = matrix.indices[start:end][order]
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--labels", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_texts, train_labels = read(args.train)
    test_texts, _ = read(args.test)
    timings = {}

    started = time.perf_counter()
    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2, dtype=np.float32)
    x_train = vectorizer.fit_transform(train_texts).astype(np.float32).tocsr()
    x_test = vectorizer.transform(test_texts).astype(np.float32).tocsr()
    rows = np.repeat(np.arange(len(train_labels)), [len(labels) for labels in train_labels])
    y_train = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, np.concatenate(train_labels))),
                            shape=(len(train_labels), args.labels))
    timings["tfidf_s"] = time.perf_counter() - started
    timings["tfidf_features"] = int(x_train.shape[1])

    from pecos.xmc import Indexer, LabelEmbeddingFactory
    from pecos.xmc.xlinear.model import XLinearModel

    started = time.perf_counter()
    label_features = LabelEmbeddingFactory.create(y_train, x_train, method="pifa")
    model = XLinearModel.train(x_train, y_train, C=Indexer.gen(label_features))
    timings["pecos_train_s"] = time.perf_counter() - started
    started = time.perf_counter()
    np.save(out / "pecos.npy", top_k_rows(model.predict(x_test, only_topk=args.k), args.k))
    timings["pecos_predict_s"] = time.perf_counter() - started

    from napkinxc.models import PLT

    started = time.perf_counter()
    plt = PLT(str(out / "napkinxc-model"))
    plt.fit(x_train, train_labels)
    timings["napkinxc_train_s"] = time.perf_counter() - started
    started = time.perf_counter()
    predictions = plt.predict(x_test, top_k=args.k)
    table = np.full((len(predictions), args.k), -1, dtype=np.int64)
    for row, labels in enumerate(predictions):
        table[row, :len(labels)] = labels[:args.k]
    np.save(out / "napkinxc.npy", table)
    timings["napkinxc_predict_s"] = time.perf_counter() - started
    (out / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    print(json.dumps(timings))


if __name__ == "__main__":
    main()
