# syntax=docker/dockerfile:1
# Two images from one file:
#   api    — the public surface: base dependencies, cli/ + service/ + migrations/. No torch, and no
#            workers/ or models/ code or checkpoints (the API must never import torch, and checkpoints
#            are hospital-zone data).
#   worker — the hospital zone: the `worker` extra (torch, opacus, pydicom), workers/ and models/.
# Build: docker build --target api -t xraysynth-api .   /   docker build --target worker -t xraysynth-worker .

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system xraysynth && useradd --system --gid xraysynth --home-dir /app xraysynth
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY cli ./cli
COPY service ./service
COPY migrations ./migrations

FROM base AS api
# Base dependencies only (pyproject's [project.dependencies]); no extras.
RUN pip install . && rm -rf /app/cli /app/service /app/migrations
USER xraysynth
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v1/health', timeout=4)"
CMD ["xraysynth", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]

FROM base AS worker
# PyPI's torch wheel for Linux carries CUDA (what a GPU worker wants); for a CPU-only worker pass
# --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_INDEX_URL=
COPY workers ./workers
COPY models ./models
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0; fi \
 && pip install ".[worker]" \
 && rm -rf /app/cli /app/service /app/workers /app/migrations /app/models
USER xraysynth
CMD ["xraysynth", "worker", "--concurrency", "1", "--pool", "solo"]
