# vfio-manager container image: the CLI in a virtualenv on a slim Python/Debian base.
#
#   podman build -t vfio-manager .        (or: docker build -t vfio-manager .)
#   podman run --rm --privileged -v /sys:/sys -v /dev:/dev -v /:/host:ro -e HOST_ROOT=/host \
#       -v /run/vfio-manager:/run/vfio-manager vfio-manager bind-all
#
# BASE must give python3 (>= 3.9) with the venv module and a POSIX shell with coreutils (the
# RBLN operator's vfio-bind-checker runs a /bin/sh loop with `date` and `sleep` in this
# image). It is taken BY DIGEST, so that one commit names one base (docs/release.md). CI
# builds on a Debian bookworm base made with mmdebstrap (tools/container/check), passed here
# by its own digest, so the build needs no registry; the default below is the public image
# for everyone else (docs/container.md says which digest and what was checked of it).
# Both stages use the same BASE: the virtualenv's interpreter is the base's own python3.
ARG BASE=docker.io/library/python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

# ---------------------------------------------------------------------------- build stage
FROM ${BASE} AS build
# The commit's time (tools/release/common.sh: commit_epoch): the wheel's and SBOM's dates
ARG SOURCE_DATE_EPOCH=315532800
ARG REVISION=unknown
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 \
    PYTHONHASHSEED=0 SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH}
WORKDIR /src
COPY requirements/build.lock requirements/runtime.lock requirements/sbom.lock ./requirements/
COPY pyproject.toml README.md LICENSE ./
COPY vfio_manager ./vfio_manager
# Every file pip fetches is checked against the locks' hashes (--require-hashes --no-deps):
# 1. a throw-away venv gets the build backend from build.lock and builds the wheel with no
#    build isolation, after build_info.json records the commit and the runtime lock's
#    digest (what `vfio-manager --version` says);
# 2. the shipped venv is made WITHOUT pip; runtime.lock and then the wheel are installed into
#    it from outside (pip --python), so it never holds pip, setuptools or wheel; its .pyc
#    files are compiled with hashes, not timestamps (reproducible), so the read-only image
#    starts as fast as it can;
# 3. the SBOM (CycloneDX, by cyclonedx-bom from sbom.lock) is written from that venv itself.
RUN python3 -m venv /opt/build-venv \
 && /opt/build-venv/bin/pip install -q --require-hashes --no-deps -r requirements/build.lock \
 && lock=$(sha256sum requirements/runtime.lock) \
 && printf '{"commit": "%s", "lock": "sha256:%s"}\n' "$REVISION" "${lock%% *}" >vfio_manager/build_info.json \
 && /opt/build-venv/bin/pip wheel -q --no-deps --no-build-isolation --wheel-dir /dist /src \
 && python3 -m venv --without-pip /opt/vfio-manager \
 && /opt/build-venv/bin/pip --python /opt/vfio-manager/bin/python install -q --no-compile \
        --require-hashes --no-deps -r requirements/runtime.lock \
 && /opt/build-venv/bin/pip --python /opt/vfio-manager/bin/python install -q --no-compile \
        --no-deps /dist/*.whl \
 && /opt/vfio-manager/bin/python -m compileall -q --invalidation-mode unchecked-hash /opt/vfio-manager/lib \
 && /opt/vfio-manager/bin/vfio-manager --version \
 && ! /opt/vfio-manager/bin/python -c 'import pip' 2>/dev/null \
 && python3 -m venv /opt/sbom-venv \
 && /opt/sbom-venv/bin/pip install -q --require-hashes --no-deps -r requirements/sbom.lock \
 && mkdir -p /doc \
 && /opt/sbom-venv/bin/cyclonedx-py environment --output-reproducible --output-format JSON \
        --output-file /doc/sbom.cdx.json /opt/vfio-manager \
 && cp LICENSE /doc/LICENSE

# -------------------------------------------------------------------------- runtime stage
FROM ${BASE} AS runtime
ARG BASE
ARG VERSION=0.1.0
# Required, no defaults (the build fails without them): where the source is, the commit and
# requirements/runtime.lock's digest (tools/release/common.sh prints both); the last two must
# be what the build stage baked into the package, so labels and --version say one thing.
ARG SOURCE_URL
ARG REVISION
ARG LOCK_DIGEST
LABEL org.opencontainers.image.title="vfio-manager" \
      org.opencontainers.image.description="Moves Rebellions NPU PCI functions between their native driver and vfio-pci, safely and idempotently." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE}" \
      io.rebellions.vfio-manager.lock="${LOCK_DIGEST}"
ENV PATH=/opt/vfio-manager/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    LANG=C.UTF-8
COPY --from=build /opt/vfio-manager /opt/vfio-manager
COPY --from=build /doc /usr/share/doc/vfio-manager
# The image runs no package installs: the base's own pip, setuptools and bundled wheels are
# removed, so nothing in the image can fetch and run code it was not built with.
#
# The drop-in for the RBLN operator, which calls /bin/vfio-manage.sh: the link to the
# `vfio-manage` console script is REQUIRED; without the script the build fails.
RUN set -eu; \
    test -n "${SOURCE_URL:-}" || { echo "--build-arg SOURCE_URL= is required" >&2; exit 1; }; \
    baked=$(cat /opt/vfio-manager/lib/python3*/site-packages/vfio_manager/build_info.json); \
    test "$baked" = "{\"commit\": \"${REVISION:-}\", \"lock\": \"${LOCK_DIGEST:-}\"}" || \
        { echo "REVISION/LOCK_DIGEST build args differ from the baked $baked" >&2; exit 1; }; \
    for site in $(python3 -c 'import site, sysconfig; print(" ".join({sysconfig.get_paths()["purelib"], *site.getsitepackages()}))'); do \
        rm -rf "$site"/pip "$site"/pip-* "$site"/setuptools "$site"/setuptools-* "$site"/wheel "$site"/wheel-* \
               "$site"/pkg_resources "$site"/_distutils_hack "$site"/distutils-precedence.pth; \
    done; \
    ensurepip=$(python3 -c 'import os, sysconfig; print(os.path.join(sysconfig.get_paths()["stdlib"], "ensurepip"))'); \
    rm -rf "$ensurepip/_bundled" /usr/share/python-wheels /usr/local/bin/pip* /usr/bin/pip*; \
    test -x /opt/vfio-manager/bin/vfio-manage || { echo "no vfio-manage console script: the drop-in cannot be linked" >&2; exit 1; }; \
    ln -s /opt/vfio-manager/bin/vfio-manage /bin/vfio-manage.sh; \
    /bin/vfio-manage.sh help >/dev/null; \
    /opt/vfio-manager/bin/vfio-manager --version; \
    if python3 -m pip --version >/dev/null 2>&1; then echo "pip is still in the image" >&2; exit 1; fi
# Root by necessity, said out loud: the sysfs binding files (driver_override, bind, unbind,
# drivers_probe) are writable only by the host's uid 0 (or CAP_DAC_OVERRIDE) in the initial
# user namespace (docs/security.md). hadolint's DL3002 asks for a non-root user; this tool
# cannot be one.
# hadolint ignore=DL3002
USER 0:0
ENTRYPOINT ["vfio-manager"]
CMD ["status"]
