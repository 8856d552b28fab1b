.PHONY: test lint format
test:
	python -m pytest -q
lint:
	ruff check . && ruff format --check . && mypy
format:
	ruff format . && ruff check --fix .
