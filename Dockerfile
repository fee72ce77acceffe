# trafficcast: the forecast service (`trafficcast serve`) and, with another command, the
# retraining job. CPU build of torch. See the README's "Docker" section for build and run.
#
# Build arguments (all optional):
#   BASE_IMAGE        a Debian-like image with python3 (3.11, as the torch wheel below) and venv;
#                     an argument so the same file builds where public registries can't be reached.
#   TORCH_VERSION     must equal pyproject's pin (a test checks it).
#   TORCH_VARIANT     cpu (default). The build fails if torch is not a CPU build, so a
#                     misconfigured index can't slip the multi-GB CUDA wheel into the image.
#                     GPU variant: see the README (CUDA base, cu* index, TORCH_VARIANT=cuda).
#   TORCH_INDEX_URL   where torch and its own dependencies come from: PyTorch's CPU wheel index.
#   TORCH_FIND_LINKS  instead, a directory (or page) of torch wheels, e.g. one mounted into the
#                     build; the other packages then come from PIP_INDEX_URL.
#   PIP_INDEX_URL     the package index for everything else (pip reads it from the environment).
#   PIP_CERT          a CA bundle inside the build, for an index behind a TLS-inspecting proxy.
ARG BASE_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
# Build stage: a virtual environment in /opt/venv with the project installed (not editable), so
# the final stage copies one directory and no compilers, caches or sources.
FROM ${BASE_IMAGE} AS build

ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_FIND_LINKS=
ARG PIP_INDEX_URL
ARG PIP_CERT

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=180

SHELL ["/bin/sh", "-eu", "-c"]

RUN python3 -m venv /opt/venv

# torch first, alone, from the CPU source, so that the project's own `torch==X` pin is already
# satisfied when the rest installs and PyPI's CUDA wheel is never chosen (in a wheel directory,
# 2.13.0+cpu also outranks PyPI's plain 2.13.0; and a local version satisfies ==2.13.0). The
# check after it fails the build on any other outcome.
# SC2086: ${src} holds an option and its value and must split into two words.
# hadolint ignore=SC2086
RUN if [ -n "${TORCH_FIND_LINKS}" ]; then src="--find-links ${TORCH_FIND_LINKS}"; \
    else src="--index-url ${TORCH_INDEX_URL}"; fi; \
    /opt/venv/bin/pip install ${src} "torch==${TORCH_VERSION}"; \
    /opt/venv/bin/python -c "import sys, torch; \
v = torch.__version__.split('+')[0]; cuda = torch.version.cuda; \
ok = v == '${TORCH_VERSION}' and (cuda is None) == ('${TORCH_VARIANT}' == 'cpu'); \
print('torch', torch.__version__, 'cuda', cuda); sys.exit(0 if ok else 'wrong torch build')"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY models ./models
COPY data ./data
COPY graph ./graph
COPY trafficcast ./trafficcast

# Not editable: the code, the dashboard, the bundled model and the bundled week are package
# data inside site-packages, so /src is not needed at run time.
RUN /opt/venv/bin/pip install . \
    && /opt/venv/bin/pip check

# Serving never compiles C++ against torch nor runs test suites: drop torch's headers, its C++
# test binaries and every package's tests (but PyTables', which it imports at import time):
# roughly 300 MB. The imports below prove that the service and training still load without
# them (run from /, so that they import the installed package, not /src).
WORKDIR /
RUN site="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"; \
    rm -rf "${site}/torch/include" "${site}/torch/test" "${site}/torch/share/cmake"; \
    if [ -d "${site}/torch/bin" ]; then \
        find "${site}/torch/bin" -type f ! -name torch_shm_manager -delete; fi; \
    find "${site}" -depth -type d -name tests -path "${site}/*/tests" \
        ! -path "${site}/tables/*" -exec rm -rf {} +; \
    /opt/venv/bin/python -c "import trafficcast.app.cli, trafficcast.app.service, \
trafficcast.app.pipeline, trafficcast.models.checkpoint, trafficcast.graph, trafficcast.data, \
tables, pandas, pyarrow.parquet, scipy.sparse, sympy, networkx, torch_geometric, matplotlib.pyplot; \
from trafficcast.app.settings import BUNDLED_RUN_DIR as r; \
assert (r / 'model.pt').is_file(), r"

# ---------------------------------------------------------------------------------------------
# Final stage: the base, the virtual environment, a user and the two data directories.
FROM ${BASE_IMAGE} AS runtime

LABEL org.opencontainers.image.title="trafficcast" \
      org.opencontainers.image.description="DCRNN traffic forecasting: REST service and retraining job"

# A fixed numeric id, so orchestrators can check runAsNonRoot and volumes can be pre-owned.
RUN groupadd --gid 10001 trafficcast \
    && useradd --no-log-init --uid 10001 --gid trafficcast --home-dir /home/trafficcast \
       --create-home --shell /usr/sbin/nologin trafficcast \
    && mkdir -p /registry /state \
    && chown trafficcast:trafficcast /registry /state

# tcmalloc as the allocator of every process (LD_PRELOAD below): PyTorch's CPU training frees
# and reallocates tensors of many sizes each step, which fragments glibc's heap; with tcmalloc
# training peaks at about half the memory at the same speed (bench/README.md).
# `-e LD_PRELOAD= -e TRAFFICCAST_ALLOCATOR=system` turns it off (without the second, the
# trafficcast commands would find the library and restart under it themselves: app/allocator.py).
# DL3008: the base image's Debian release fixes the package's version; pinning an exact version
# would break the build at every point release of that release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libtcmalloc-minimal4 \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && lib="$(find /usr/lib -name libtcmalloc_minimal.so.4 -print -quit)" \
    && test -n "${lib}" \
    && ln -s "${lib}" /usr/local/lib/libtcmalloc_minimal.so.4

COPY --from=build /opt/venv /opt/venv

# Settings by environment (app/settings.py, prefix TRAFFICCAST_); listen on all interfaces
# inside the container; observations in the /state volume; models from the registry in the
# /registry volume. While the registry has no promoted version (a fresh volume) the service
# serves the bundled METR-LA week model shipped in the package, and swaps to the first version
# `trafficcast retrain` promotes (TRAFFICCAST_REGISTRY_FALLBACK=false waits instead).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    TRAFFICCAST_HOST=0.0.0.0 \
    TRAFFICCAST_PORT=8000 \
    TRAFFICCAST_OBSERVATIONS_DB=/state/observations.sqlite3 \
    TRAFFICCAST_REGISTRY=/registry \
    LD_PRELOAD=/usr/local/lib/libtcmalloc_minimal.so.4

VOLUME ["/registry", "/state"]
WORKDIR /state
USER 10001:10001
EXPOSE 8000

# Liveness: /healthz answers while the process runs (readiness, /readyz, is for load balancers
# and compose's depends_on). Stdlib only, so the image needs no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('TRAFFICCAST_PORT', '8000'), timeout=4)"]

CMD ["trafficcast", "serve"]
