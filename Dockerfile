# syntax=docker/dockerfile:1
# pricematch service image. Targets:
#   gpu (default): CUDA runtime + onnxruntime-gpu + faiss-gpu   docker build -t pricematch .
#   cpu:           slim Python, onnxruntime + faiss-cpu          docker build --target cpu -t pricematch:cpu .
# Both serve the default encoders (exported at build time; torch only in the build stage),
# an empty catalogue persisted in /data, or a bundle mounted and named by PRICEMATCH_BUNDLE.
# --build-arg EXTRAS="[scale]" adds the scale-out extra to the cpu image (pymilvus for
# PRICEMATCH_VECTOR_STORE=milvus; compose's milvus profile builds it so).

# ---- stage 1: export the default encoders to ONNX (needs torch; never shipped) ----------
FROM python:3.11-slim AS models
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PRICEMATCH_NO_PROGRESS=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY index ./index
COPY service ./service
COPY training ./training
# Versions come from pyproject.toml's ranges (hadolint cannot see them).
# hadolint ignore=DL3013
RUN pip install ".[train]" \
    && pricematch export-default --out /models/default

# ---- common settings of the run-time images ------------------------------------------
FROM python:3.11-slim AS cpu
ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PRICEMATCH_NO_PROGRESS=1 \
    PRICEMATCH_MODEL_DIR=/opt/pricematch/models/default \
    PRICEMATCH_DATA_DIR=/data/catalogue \
    PRICEMATCH_DEVICE=cpu
WORKDIR /opt/pricematch
COPY pyproject.toml README.md ./
COPY index ./index
COPY service ./service
COPY training ./training
RUN pip install "./${EXTRAS}" \
    && useradd --create-home --uid 10001 pricematch \
    && mkdir -p /data && chown pricematch /data
COPY --from=models /models/default ./models/default
USER 10001
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
ENTRYPOINT ["pricematch"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

# ---- GPU image (default target) --------------------------------------------------------
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 AS gpu
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PRICEMATCH_NO_PROGRESS=1 \
    PRICEMATCH_MODEL_DIR=/opt/pricematch/models/default \
    PRICEMATCH_DATA_DIR=/data/catalogue \
    PRICEMATCH_DEVICE=auto \
    PATH=/opt/venv/bin:$PATH
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
WORKDIR /opt/pricematch
COPY pyproject.toml README.md ./
COPY index ./index
COPY service ./service
COPY training ./training
# The base dependencies bring the CPU builds of onnxruntime and faiss; the GPU builds
# replace them (same import names).
# hadolint ignore=DL3013
RUN pip install ".[gpu]" \
    && pip uninstall -y onnxruntime faiss-cpu \
    && pip install --force-reinstall --no-deps "onnxruntime-gpu>=1.17" "faiss-gpu-cu12>=1.8" \
    && useradd --create-home --uid 10001 pricematch \
    && mkdir -p /data && chown pricematch /data
COPY --from=models /models/default ./models/default
USER 10001
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
ENTRYPOINT ["pricematch"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
