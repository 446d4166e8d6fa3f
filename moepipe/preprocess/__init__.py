"""Preprocess stage: curated crops -> seeded albumentations -> packed train/val arrays (data/prepared)."""
