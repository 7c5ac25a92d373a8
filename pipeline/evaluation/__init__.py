"""Evaluation of a run (`vqgen eval`): the judge that embeds images, the Frechet distance and
precision/recall of its features, the classification accuracy score, the two-stage likelihood, the
standard Inception FID, and evaluate.py, the driver that joins them."""
