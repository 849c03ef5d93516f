# The selectit image of the compose fleet (migrate, workers, flower).
# TORCH_INDEX picks the torch build: cu128 for NVIDIA GPUs, cpu for CPU-only machines.
FROM python:3.11-slim
ARG TORCH_INDEX=cu128
# EXTRAS=scoring,fleet,vllm adds the vLLM engine (`SELECTIT_ENGINE=vllm`, GPU images).
ARG EXTRAS=scoring,fleet
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /app
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/${TORCH_INDEX}
COPY pyproject.toml README.md ./
COPY selectit ./selectit
COPY workers ./workers
COPY alembic ./alembic
COPY migrations ./migrations
# A regular (not editable) install: the image runs the wheel's layout, `selectit.workers` and all.
RUN pip install ".[${EXTRAS}]" && rm -rf /app/selectit /app/workers /app/alembic /app/migrations
RUN useradd -m selectit && mkdir -p /cache && chown selectit /cache
USER selectit
CMD ["selectit", "--help"]
