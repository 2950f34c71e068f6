"""Deployment-test app (see tests/test_flower_deployment.py)."""
