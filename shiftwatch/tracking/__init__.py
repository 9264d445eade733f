"""MLflow: the store and its health, what dvc.yaml declares, one parent run per pipeline
execution with a child per stage, check logging, and the model registry."""
