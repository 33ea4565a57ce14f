"""Evaluation: metrics of samples and likelihoods of trained runs (a sibling of training and
generation; it imports neither).

    features            FID Inception features of uint8 batches; loading the network
    inception_metrics   FID, sFID, Inception Score, precision/recall against an ADM reference
    frechet, metrics    the Fréchet distance and statistics; IS and precision/recall kernels
    reference           ADM reference batches of a dataset split
    digits, digits_classifier   digits-FID and class accuracy of the digits default
    likelihood          held-out bits/dim (−ELBO) and the per-pixel baselines
    results             results JSON and the printed table
    evaluate            a whole sample file, as launch/evaluate.py runs it
Nothing here downloads weights; tests use random Inception weights.
"""
