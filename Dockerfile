# GadSynth as a MONAI Application Package (MAP): the layout holoscan-cli 4.2's packager writes, built without it.
#
#   GPU (default): docker build -t gadsynth:0.1.0 .
#   CPU:           docker build -t gadsynth:0.1.0-cpu --build-arg FLAVOUR=cpu --build-arg BASE_IMAGE=debian:bookworm-slim .
#   Here (no Docker engine, no registry): deploy/build-image.sh (buildah, a debootstrap base image).
#
# Batch mode (the default command): the pipeline on /var/holoscan/input into /var/holoscan/output, exit code 0 / 2 / 1.
# Service mode: `gadsynth serve --host 0.0.0.0` (HTTP 8000, DICOM 11112). Air-gapped sites: put wheels in
# deploy/wheelhouse/ and build with --build-arg PIP_OFFLINE=1.

# onnxruntime-gpu 1.31 is built for CUDA 13 and cuDNN 9.
ARG BASE_IMAGE=nvcr.io/nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ARG FLAVOUR=gpu

# --- Python 3.11 on the base image -------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS python
COPY deploy/install-python.sh /tmp/install-python.sh
RUN sh /tmp/install-python.sh && rm /tmp/install-python.sh

# --- build: a virtual environment with the pinned runtime dependencies -------------------------------------------
FROM python AS build
ARG FLAVOUR
ARG PIP_OFFLINE=
# A CA bundle pip must trust (a TLS-inspecting proxy); deploy/build-image.sh mounts the host's for the build only.
ARG PIP_CERT=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3.11 -m venv /opt/venv
WORKDIR /src
# Dependencies first (their layer is reused while only GadSynth's code changes).
COPY pyproject.toml constraints.txt constraints-gpu.txt ./
COPY deploy/requirements.py deploy/requirements.py
COPY deploy/wheelhouse/ /wheelhouse/
RUN [ -n "${PIP_CERT}" ] || unset PIP_CERT; \
    /opt/venv/bin/python deploy/requirements.py --flavour "${FLAVOUR}" > requirements.txt \
 && /opt/venv/bin/pip install ${PIP_OFFLINE:+--no-index} --find-links /wheelhouse \
        -c "$( [ "${FLAVOUR}" = gpu ] && echo constraints-gpu.txt || echo constraints.txt )" -r requirements.txt \
 && /opt/venv/bin/python -c "pass" \
 && ! ls /opt/venv/lib/python3.11/site-packages/*.pth | grep -v distutils-precedence
# (Starting the interpreter runs wheel-axle's .pth hooks now, as root: they make holoscan's library symlinks and remove
# themselves. Left for the first run, they would fail as the unprivileged user and holoscan would not load.)
# GadSynth's own code is not installed into the venv: it lives once, in /opt/holoscan/app (see the runtime stage).
RUN printf '#!/bin/sh\nexec /opt/venv/bin/python3 -c "from app.cli import main; main()" "$@"\n' > /opt/venv/bin/gadsynth \
 && chmod 755 /opt/venv/bin/gadsynth

# --- the image tree: everything but the venv, assembled here so that the runtime stage copies it in one layer ----
FROM python AS tree
COPY deploy/map/__main__.py /tree/opt/holoscan/app/__main__.py
COPY app /tree/opt/holoscan/app/app
COPY operators /tree/opt/holoscan/app/operators
COPY training /tree/opt/holoscan/app/training
COPY models /tree/opt/holoscan/models
COPY README.md /tree/opt/holoscan/docs/README.md
COPY deploy/map/app.json deploy/map/pkg.json /tree/etc/holoscan/
COPY app.yaml /tree/var/holoscan/app.yaml
COPY deploy/tools /tree/var/holoscan/tools
RUN find /tree -name __pycache__ -prune -exec rm -rf {} + \
 && mkdir -p /tree/var/holoscan/input /tree/var/holoscan/output /tree/var/holoscan/logs /tree/var/lib/gadsynth \
 && chown -R 1000:1000 /tree/var/holoscan /tree/var/lib/gadsynth && chmod 755 /tree/var/holoscan/tools

# --- runtime: the venv, the application folder, the models, the MAP manifests; no compilers, no PyTorch ----------
# Metadata first, the two large copies last: with buildah's vfs driver every instruction copies the whole tree.
FROM python AS runtime
ARG BASE_IMAGE
ARG FLAVOUR
ARG VERSION=0.1.0
ARG HOLOSCAN_SDK_VERSION=4.6.0
ARG MONAI_DEPLOY_APP_SDK_VERSION=4.0.0

RUN groupadd --system --gid 1000 holoscan \
 && useradd --system --uid 1000 --gid 1000 --home-dir /var/holoscan --shell /usr/sbin/nologin holoscan

LABEL org.opencontainers.image.title="GadSynth" \
      org.opencontainers.image.description="Synthetic contrast-enhanced brain MRI (research use, not for diagnosis)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="GadSynth" \
      org.opencontainers.image.documentation="/opt/holoscan/docs/README.md" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      org.nvidia.holoscan="${HOLOSCAN_SDK_VERSION}" \
      org.monai.deploy.app-sdk="${MONAI_DEPLOY_APP_SDK_VERSION}" \
      ai.gadsynth.flavour="${FLAVOUR}"

# Every variable the packager's template sets, with its values.
ENV HOLOSCAN_INPUT_PATH=/var/holoscan/input \
    HOLOSCAN_OUTPUT_PATH=/var/holoscan/output \
    HOLOSCAN_WORKDIR=/var/holoscan \
    HOLOSCAN_APPLICATION=/opt/holoscan/app \
    HOLOSCAN_TIMEOUT=0 \
    HOLOSCAN_MODEL_PATH=/opt/holoscan/models \
    HOLOSCAN_DOCS_PATH=/opt/holoscan/docs \
    HOLOSCAN_CONFIG_PATH=/var/holoscan/app.yaml \
    HOLOSCAN_APP_MANIFEST_PATH=/etc/holoscan/app.json \
    HOLOSCAN_PKG_MANIFEST_PATH=/etc/holoscan/pkg.json \
    HOLOSCAN_LOGS_PATH=/var/holoscan/logs \
    HOLOSCAN_VERSION=${HOLOSCAN_SDK_VERSION} \
    GADSYNTH_DATA_DIR=/var/lib/gadsynth \
    PATH=/opt/venv/bin:${PATH} \
    PYTHONPATH=/opt/holoscan/app \
    LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/holoscan/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cu13/lib \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER holoscan
WORKDIR /var/holoscan
VOLUME ["/var/lib/gadsynth"]
EXPOSE 8000 11112
# Meaningful in service mode (`gadsynth serve`); a batch run ends before the first check.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python3 -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"
ENTRYPOINT ["/var/holoscan/tools"]

COPY --from=build /opt/venv /opt/venv
COPY --from=tree /tree/ /
