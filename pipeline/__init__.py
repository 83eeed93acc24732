"""DVC stage scripts (one per stage), their shared logic (common/), params validation (config.py), MLflow (tracking.py)."""
