#!/usr/bin/env python3
"""Writes tests/data/eval/goldens.npz: gd-eval's metrics computed the way the reference's
evaluations/evaluator.py computes them (numpy + scipy.linalg.sqrtm), on small random inputs, for
tests/eval/eval_test.cc. The reference module itself imports TensorFlow at load time, so its
definitions are restated here with the same library calls:

  FID        |mu1 - mu2|^2 + tr(s1) + tr(s2) - 2 tr(sqrtm(s1 @ s2)), the real part, and the retry
             with 1e-6 on the diagonals when sqrtm's result is not finite
  precision  fraction of samples within the k-th-neighbour ball (squared distances, k = 3) of at
             least one reference point; recall the same with the roles swapped
  IS         exp(mean KL(p(y|x) || p(y))) per split of 5000, averaged

Cases: a full-rank pair of covariances (D = 8 from 40 and 30 points), a singular pair (D = 12
from 6 and 9 points: rank < D, the case the reference's retry exists for), precision/recall on
Gaussian clouds of different spread, and IS of random logits.

Usage (Debian's Python with numpy and scipy): /usr/bin/python3 scripts/make_eval_goldens.py
"""
import argparse
import os

import numpy as np
from scipy import linalg


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    covmean, _ = linalg.sqrtm(sigma1.dot(sigma2), disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def squared_distances(u, v):
    u = u.astype(np.float32)
    v = v.astype(np.float32)
    d = (u * u).sum(1)[:, None] - 2 * u @ v.T + (v * v).sum(1)[None, :]
    return np.maximum(d, 0)


def radii(features, k=3):
    return np.sort(squared_distances(features, features), axis=1)[:, k]


def precision_recall(ref, sample, k=3):
    ref_radii, sample_radii = radii(ref, k), radii(sample, k)
    d = squared_distances(ref, sample)  # [N_ref x N_sample]
    precision = (d <= ref_radii[:, None]).any(axis=0).mean()
    recall = (d <= sample_radii[None, :]).any(axis=1).mean()
    return precision, recall


def inception_score(logits, split_size=5000):
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    scores = []
    for i in range(0, len(p), split_size):
        part = p[i : i + split_size]
        kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
        scores.append(np.exp(kl.sum(1).mean()))
    return float(np.mean(scores))


def gaussian_case(rng, prefix, dim, n1, n2, out):
    mix = rng.normal(size=(dim, dim))
    x1 = rng.normal(size=(n1, dim)) @ mix
    x2 = rng.normal(size=(n2, dim)) @ (mix + 0.5 * rng.normal(size=(dim, dim))) + 0.3
    mu1, mu2 = x1.mean(0), x2.mean(0)
    s1, s2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
    out.update({f"{prefix}_mu1": mu1, f"{prefix}_sigma1": s1, f"{prefix}_mu2": mu2,
                f"{prefix}_sigma2": s2, f"{prefix}_features1": x1, f"{prefix}_features2": x2,
                f"{prefix}_fd": np.array(frechet_distance(mu1, s1, mu2, s2))})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="tests/data/eval/goldens.npz")
    args = parser.parse_args()
    rng = np.random.default_rng(13)
    out = {}
    gaussian_case(rng, "full", dim=8, n1=40, n2=30, out=out)
    gaussian_case(rng, "singular", dim=12, n1=6, n2=9, out=out)

    ref = rng.normal(size=(60, 5)).astype(np.float32)
    sample = (rng.normal(size=(45, 5)) * 1.6 + 0.4).astype(np.float32)
    precision, recall = precision_recall(ref, sample)
    out.update({"pr_ref": ref, "pr_sample": sample, "pr_ref_radii": radii(ref),
                "pr_precision": np.array(precision), "pr_recall": np.array(recall)})

    logits = (rng.normal(size=(23, 7)) * 3).astype(np.float32)
    out.update({"is_logits": logits, "is_score": np.array(inception_score(logits)),
                "is_score_split10": np.array(inception_score(logits, split_size=10))})

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    np.savez(args.out, **out)
    for key in ("full_fd", "singular_fd", "pr_precision", "pr_recall", "is_score",
                "is_score_split10"):
        print(key, out[key])


if __name__ == "__main__":
    main()
