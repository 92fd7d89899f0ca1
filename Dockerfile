# syntax=docker/dockerfile:1
#
# model-server image: a drop-in for tensorflow/serving's image.
#
#   docker build -t model-server:cpu .
#   docker build -t model-server:gpu --build-arg VARIANT=gpu .
#   docker run -p 8500:8500 -p 8501:8501 \
#       -v "$PWD/models/half_plus_two:/models/half_plus_two" \
#       -e MODEL_NAME=half_plus_two model-server:cpu [--enable_batching ...]
#
# VARIANT=cpu  plain TensorFlow wheel.
# VARIANT=gpu  TensorFlow's [and-cuda] extra: CUDA/cuDNN come as pip wheels, so
#              the base stays a slim Debian image; the host needs only the
#              NVIDIA driver + container toolkit (docker run --gpus all, or the
#              nvidia.com/gpu device plugin on Kubernetes).
# PYTHON_IMAGE is the base of every stage; any Debian-based CPython 3.11 image
# with Python at /usr/local/bin works (the venv is copied between stages).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG VARIANT=cpu

# ---------------------------------------------------------------- build stage
FROM ${PYTHON_IMAGE} AS build-base
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Third-party dependencies first, from pyproject.toml alone, so that this
# (large: TensorFlow) layer is rebuilt only when the dependencies change.
# The `text` extra too: TF Serving's image serves TensorFlow Text models.
COPY pyproject.toml ./
RUN python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["text"]))' \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt

FROM build-base AS build-cpu

FROM build-base AS build-gpu
# Same TensorFlow version as resolved above, plus the CUDA runtime wheels.
RUN TF_VERSION="$(python -c 'import importlib.metadata as m; print(m.version("tensorflow"))')" \
    && pip install --no-cache-dir "tensorflow[and-cuda]==${TF_VERSION}"

# DL3006: a stage of this file chosen by VARIANT, not a registry image.
# hadolint ignore=DL3006
FROM build-${VARIANT} AS build
WORKDIR /src
# The package itself; protobuf modules are generated into serving/_generated
# before the (non-editable) install so that they are part of it.
COPY README.md ./
COPY protos ./protos
COPY serving ./serving
RUN python -m serving.protogen \
    && pip install --no-cache-dir --no-deps . \
    && rm -rf /src/build /src/*.egg-info

# -------------------------------------------------------------- runtime stage
FROM ${PYTHON_IMAGE} AS runtime-base
# tini: a real init as PID 1 that forwards SIGTERM to the server (graceful
# drain) and reaps zombies. Versions come from the pinned Debian release of
# the base image; pinning package versions as well would break the build on
# every Debian point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

# Non-root user; group 0 so arbitrary-UID platforms (OpenShift) can also write
# where the user can.
RUN useradd --uid 10001 --gid 0 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin model-server \
    && mkdir -p /models \
    && chown 10001:0 /models \
    && chmod 0775 /models

COPY --from=build /opt/venv /opt/venv
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/docker-entrypoint.sh
COPY --chmod=0755 docker/healthcheck.py /usr/local/bin/healthcheck.py

# TF Serving's image contract: ${MODEL_BASE_PATH}/${MODEL_NAME} is served.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MODEL_NAME=model \
    MODEL_BASE_PATH=/models \
    TF_CPP_MIN_LOG_LEVEL=1

# 8500: gRPC (PredictionService, ModelService, grpc.health.v1)
# 8501: REST (/v1/models/..., /v1/health/{live,ready}, Prometheus metrics)
EXPOSE 8500 8501
USER 10001:0

# Healthy = ready (every configured model has an available version). Model
# loading can take a while: failures during the start period do not count.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/usr/local/bin/healthcheck.py"]

ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/docker-entrypoint.sh"]
CMD []

FROM runtime-base AS runtime-cpu

FROM runtime-base AS runtime-gpu
# Read by the NVIDIA container toolkit: expose the GPUs and the compute libs.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# The last stage is what `docker build` produces. (DL3006: a stage of this
# file, chosen by VARIANT, not an image from a registry.)
# hadolint ignore=DL3006
FROM runtime-${VARIANT}
LABEL org.opencontainers.image.title="model-server" \
      org.opencontainers.image.description="Drop-in replacement for tensorflow_model_server (gRPC 8500, REST 8501)" \
      org.opencontainers.image.licenses="Apache-2.0"
