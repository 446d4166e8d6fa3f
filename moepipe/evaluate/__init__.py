"""Evaluation building blocks: a domain feature extractor, FD/KID/precision-recall, control accuracy.

`features` trains the attribute classifier whose embedding the metrics use; `inception` offers
the standard FID Inception-v3 when the user supplies its weights file locally.
"""

from moepipe.evaluate.features import (
    AttributeClassifier,
    classify,
    extract,
    load_classifier,
    save_classifier,
    train_classifier,
)
from moepipe.evaluate.inception import FIDInceptionV3, inception_features, load_fid_inception
from moepipe.evaluate.metrics import (
    control_accuracy,
    fd_from_features,
    frechet_distance,
    kid,
    precision_recall,
)

__all__ = [
    "AttributeClassifier", "classify", "extract", "load_classifier", "save_classifier", "train_classifier",
    "control_accuracy", "fd_from_features", "frechet_distance", "kid", "precision_recall",
    "FIDInceptionV3", "inception_features", "load_fid_inception",
]
