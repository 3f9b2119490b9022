# Distillery: one image for the API, the one-shot migration, the GPU workers and Flower
# (docker-compose.yml picks the command per service).
#
#   docker build -t distillery .        # CUDA torch for GPU workers (default, several GB)
#   docker build -t distillery:cpu --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#                                        # CPU-only torch: small image for the API/Flower or a GPU-less box
#
# Other CUDA builds: TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 (and so on). The CUDA runtime
# ships inside the torch wheels; the host needs only the NVIDIA driver and the NVIDIA Container Toolkit.
#
# Behind a TLS-intercepting proxy, give pip the proxy's CA bundle as a build secret (it is mounted
# only while pip runs and never stored in a layer):
#   docker build --secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt -t distillery .
#
# The source tree stays in /app (editable install): `distillery migrate` finds alembic.ini and
# migrations/ next to the `app` package (app/cli/serve.py: ROOT = parent of the package).
#
# BASE_IMAGE exists for deploy/compose-smoke.sh, whose machine reaches no image registry and builds
# a Debian stand-in; every other build uses the default, the official Python image.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# torch is installed first, from its own index, so the project's `torch>=2.3` is already satisfied
# and pip never pulls a second (default PyPI) torch build.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
ARG FLOWER_VERSION=2.2.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    DISTILLERY_HOST=0.0.0.0 \
    DISTILLERY_PORT=8000 \
    DISTILLERY_DATA_DIR=/data

# Non-root runtime user. /data (artifacts in /data/artifacts, checkpoints in /data/work) is created
# here and owned by that user, so a fresh named volume mounted on /data inherits the ownership.
RUN groupadd --system --gid 10001 distillery \
    && useradd --system --uid 10001 --gid distillery --create-home --home-dir /home/distillery \
        --shell /usr/sbin/nologin distillery \
    && mkdir -p /data/artifacts /data/work \
    && chown -R distillery:distillery /data

WORKDIR /app

# Layer 1 (largest, changes least): torch.
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

# Layer 2: the project's dependencies, read from pyproject.toml (rebuilt only when it changes),
# plus Flower for the queue monitor.
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep=chr(10))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt "flower==${FLOWER_VERSION}" \
    && rm /tmp/requirements.txt \
    && python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# Layer 3: the source (see .dockerignore), installed in place without touching the dependencies.
COPY . .
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && pip install --no-cache-dir --no-deps -e . \
    && test -f /app/alembic.ini \
    && test -d /app/migrations/versions \
    && distillery --help > /dev/null

USER distillery

EXPOSE 8000 5555

# Liveness of the default command (the API). No curl in the slim image: a stdlib-only script.
# docker-compose.yml checks /readyz for the api, Flower's /healthcheck for flower, and switches
# this off for migrate and the workers.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/app/docker/healthcheck.py", "/healthz"]

CMD ["distillery", "api"]
