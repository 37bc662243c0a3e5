# GadSynth MAP image (MONAI Application Package layout).
# Not yet built in CI: this machine has no Docker engine; buildah builds it from a local base image
# (`buildah bud --storage-driver vfs --isolation chroot --network host --build-arg BASE_IMAGE=...`).
# The container issue adds the debootstrap base, the build script and a smoke test.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV HOLOSCAN_INPUT_PATH=/var/holoscan/input \
    HOLOSCAN_OUTPUT_PATH=/var/holoscan/output \
    HOLOSCAN_MODEL_PATH=/opt/holoscan/models \
    HOLOSCAN_WORKDIR=/var/holoscan \
    HOLOSCAN_APPLICATION=/opt/holoscan/app \
    GADSYNTH_MODELS_DIR=/opt/holoscan/models \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /opt/holoscan/app
COPY pyproject.toml constraints.txt README.md app.yaml ./
COPY app ./app
COPY operators ./operators
COPY training ./training
RUN python -m pip install --no-cache-dir -c constraints.txt . \
 && mkdir -p /var/holoscan/input /var/holoscan/output /opt/holoscan/models
COPY models /opt/holoscan/models
COPY app.yaml /etc/holoscan/app.yaml

# Non-root at run time; the input is read-only, the output is written.
RUN useradd --system --uid 1000 --home /var/holoscan gadsynth && chown -R gadsynth /var/holoscan
USER gadsynth
ENTRYPOINT ["python", "-m", "app"]
