"""Evaluation: bits/dim over a dataset, sample quality (pluggable feature extractors, FID/IS/PRDC,
per-class accuracy), ADM-format sample files, and cost (parameters, FLOPs, throughput)."""
from .bpd import dataset_bpd
from .extractors import Extractor, get_extractor, list_extractors, register_extractor
from .fid import FeatureStats, fid, frechet_distance
from .quality import Reference, sample_quality
from .samples import generate_samples_npz, load_samples_npz, save_samples_npz
from .scores import class_accuracy, inception_score, prdc

__all__ = ["Extractor", "FeatureStats", "Reference", "class_accuracy", "dataset_bpd", "fid", "frechet_distance",
           "generate_samples_npz", "get_extractor", "inception_score", "list_extractors", "load_samples_npz",
           "prdc", "register_extractor", "sample_quality", "save_samples_npz"]
