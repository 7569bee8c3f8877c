# vfio-manager container image: the CLI in a virtualenv on a slim Python/Debian base.
#
#   podman build -t vfio-manager .        (or: docker build -t vfio-manager .)
#   podman run --rm --privileged -v /sys:/sys -v /dev:/dev -v /:/host:ro -e HOST_ROOT=/host \
#       -v /run/vfio-manager:/run/vfio-manager vfio-manager bind-all
#
# BASE must give python3 (>= 3.9) with the venv module and a POSIX shell with coreutils (the
# RBLN operator's vfio-bind-checker runs a /bin/sh loop with `date` and `sleep` in this
# image). CI builds on a Debian bookworm base made with mmdebstrap (tools/container/check),
# so the build needs no registry; the default below is the public image for everyone else.
# Both stages use the same BASE: the virtualenv's interpreter is the base's own python3.
ARG BASE=docker.io/library/python:3.11-slim-bookworm

# ---------------------------------------------------------------------------- build stage
FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY vfio_manager ./vfio_manager
# 1. a throw-away venv with pip builds the wheel (hatchling comes from the index);
# 2. the shipped venv is made WITHOUT pip and the wheel is installed into it from outside
#    (pip --python), so it never holds pip, setuptools or wheel; its .pyc files are compiled
#    now so the read-only image starts as fast as it can.
RUN python3 -m venv /opt/build-venv \
 && /opt/build-venv/bin/pip wheel --no-deps --wheel-dir /dist /src \
 && python3 -m venv --without-pip /opt/vfio-manager \
 && /opt/build-venv/bin/pip --python /opt/vfio-manager/bin/python install /dist/*.whl \
 && /opt/vfio-manager/bin/python -m compileall -q /opt/vfio-manager/lib \
 && /opt/vfio-manager/bin/vfio-manager --version \
 && ! /opt/vfio-manager/bin/python -c 'import pip' 2>/dev/null

# -------------------------------------------------------------------------- runtime stage
FROM ${BASE} AS runtime
ARG VERSION=0.1.0
ARG SOURCE_URL=https://example.invalid/vfio-manager
ARG REVISION=unknown
LABEL org.opencontainers.image.title="vfio-manager" \
      org.opencontainers.image.description="Moves Rebellions NPU PCI functions between their native driver and vfio-pci, safely and idempotently." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/vfio-manager /opt/vfio-manager
# The image runs no package installs: the base's own pip, setuptools and bundled wheels are
# removed, so nothing in the image can fetch and run code it was not built with.
#
# Compat drop-in for the RBLN operator, which calls /bin/vfio-manage.sh: link it to the
# `vfio-manage` console script when the installed package ships one (issue 11, part 4). No
# script, no link; once the package provides it, this step starts linking it unchanged.
RUN set -eu; \
    for site in $(python3 -c 'import site, sysconfig; print(" ".join({sysconfig.get_paths()["purelib"], *site.getsitepackages()}))'); do \
        rm -rf "$site"/pip "$site"/pip-* "$site"/setuptools "$site"/setuptools-* "$site"/wheel "$site"/wheel-* \
               "$site"/pkg_resources "$site"/_distutils_hack "$site"/distutils-precedence.pth; \
    done; \
    ensurepip=$(python3 -c 'import os, sysconfig; print(os.path.join(sysconfig.get_paths()["stdlib"], "ensurepip"))'); \
    rm -rf "$ensurepip/_bundled" /usr/share/python-wheels /usr/local/bin/pip* /usr/bin/pip*; \
    if [ -x /opt/vfio-manager/bin/vfio-manage ]; then \
        ln -sf /opt/vfio-manager/bin/vfio-manage /bin/vfio-manage.sh; \
    fi; \
    /opt/vfio-manager/bin/vfio-manager --version; \
    if python3 -m pip --version >/dev/null 2>&1; then echo "pip is still in the image" >&2; exit 1; fi
ENV PATH=/opt/vfio-manager/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    LANG=C.UTF-8
# Root by necessity, said out loud: the sysfs binding files (driver_override, bind, unbind,
# drivers_probe) are writable only by the host's uid 0 (or CAP_DAC_OVERRIDE) in the initial
# user namespace (docs/security.md). hadolint's DL3002 asks for a non-root user; this tool
# cannot be one.
# hadolint ignore=DL3002
USER 0:0
ENTRYPOINT ["vfio-manager"]
CMD ["status"]
