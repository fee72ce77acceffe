# First version of the trafficcast image (the Docker issue finishes it: multi-stage build,
# healthcheck, registry volume, compose). The base image is a build argument so that the same
# file builds where public registries can't be reached.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# Where torch comes from: PyTorch's CPU wheel index keeps the image free of the multi-GB CUDA
# build; point it at a local wheel directory or mirror when building offline.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY app ./app
COPY models ./models
COPY data ./data
COPY graph ./graph

RUN python -m pip install --extra-index-url "${TORCH_INDEX_URL}" . \
    && useradd --create-home --uid 10001 trafficcast

USER trafficcast
EXPOSE 8000
CMD ["trafficcast", "serve", "--host", "0.0.0.0", "--port", "8000"]
