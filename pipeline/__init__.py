"""DVC stage scripts (one per stage), their shared logic (common.py), params validation (config.py), MLflow (tracking.py)."""
