"""Prefect flows: when and where the DVC pipeline runs, what is retried, what is reported.

The flows hold no stage logic and no DAG: the stage list and its order come from DVC (dvc.yaml),
each stage runs as `dvc repro --single-item <stage>`, and DVC decides what is stale and records
lineage in dvc.lock. Deployments live in prefect.yaml at the repository root.

Module names avoid those of installed packages (no `dvc.py`): Prefect puts this folder first on
sys.path when it loads an entrypoint such as `flows/pipeline.py:pipeline`.
"""
