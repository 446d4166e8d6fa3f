"""Register stage: MLflow runs, the model registry, promotion to the champion alias, model cards, the pyfunc."""
