# pricematch on a GPU host: ONNX Runtime (CUDA) + faiss-gpu, no torch at run time.
# Build: docker build -t pricematch .      CPU-only image: --build-arg EXTRAS=""
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ARG EXTRAS="[gpu]"
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PRICEMATCH_NO_PROGRESS=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3-pip \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
COPY pyproject.toml README.md ./
COPY index ./index
COPY service ./service
COPY training ./training
RUN pip install ".${EXTRAS}"

RUN useradd --create-home --uid 10001 pricematch && mkdir -p /data && chown pricematch /data
USER pricematch
VOLUME ["/data"]

ENTRYPOINT ["pricematch"]
CMD ["--help"]
