"""Developer tools run by `make` targets, not by the training pipeline (`make api-check`: api_check)."""
