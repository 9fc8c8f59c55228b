# GPU training and inference image for uwm_d2.
# torch 2.14.1's default wheels bundle the CUDA 13.0 user-space libraries, so a CUDA 13.0 runtime
# base matches them; the host only needs an NVIDIA driver that supports CUDA 13.
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

# Python 3 with venv, and the one shared library OpenCV's headless wheel still loads.
# Versions are not pinned on purpose: the base image's Ubuntu archive ships security updates under
# new version strings, so pins would break rebuilds; the Python side is pinned in scripts/.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

# A numeric uid so mounted /data and /out folders map cleanly to host permissions.
RUN useradd --create-home --uid 1000 uwm
WORKDIR /app
COPY --chown=1000:1000 . /app
USER 1000

# The same install step as `make install` (one install path): .venv with torch, detectron2, uwm_d2.
RUN bash scripts/install.sh /app/.venv
ENV PATH=/app/.venv/bin:$PATH

CMD ["bash", "-c", "python tools/train_net.py --help && python tools/infer_submit.py --help"]
