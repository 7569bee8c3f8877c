# tools/release/common.sh - sourced by the release tools: paths, the release's identity
# (version, commit, SOURCE_DATE_EPOCH, the runtime lock's digest) and the tools' virtualenv.
# shellcheck shell=bash

RELEASE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$RELEASE_DIR/../.." && pwd)
REQS=$REPO/requirements
RELEASE_CACHE=${RELEASE_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/vfio-manager-release}
# The Python the shipped artifacts are locked for and built with (Debian 12's; the lock is
# resolved for 3.11 and later, so Ubuntu 24.04's 3.12 takes the same pins).
# shellcheck disable=SC2034 # used by tools/release/lock
LOCK_ARGS=(--universal --python-version 3.11 --generate-hashes --custom-compile-command tools/release/lock)

rlog() { printf '[release %4ds] %s\n' "$SECONDS" "$*" >&2; }
rfail() { rlog "FAIL: $*"; exit 1; }

project_version() {
    sed -n 's/^version *= *"\(.*\)"$/\1/p' "$REPO/pyproject.toml" | head -1
}

# The commit the tree is (a release is built from a clean checkout of one; a tree with
# uncommitted changes to tracked files says so with -dirty)
commit_of_tree() {
    local commit
    commit=$(git -C "$REPO" rev-parse HEAD 2>/dev/null) || { echo unknown; return; }
    [[ -z $(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null) ]] || commit+=-dirty
    echo "$commit"
}

# SOURCE_DATE_EPOCH: the commit's time, so that every timestamp a build writes is the commit's
commit_epoch() {
    if [[ -n ${SOURCE_DATE_EPOCH:-} ]]; then echo "$SOURCE_DATE_EPOCH"; return; fi
    git -C "$REPO" log -1 --format=%ct HEAD 2>/dev/null || echo 315532800  # 1980-01-01
}

runtime_lock_digest() {
    echo "sha256:$(sha256sum "$REQS/runtime.lock" | cut -d' ' -f1)"
}

# tools_venv: $TOOLS/bin/{uv,pip-audit} from requirements/tools.lock, hash-checked; one
# virtualenv per content of that lock, reused
tools_venv() {
    local key
    key=$(sha256sum "$REQS/tools.lock" | cut -c1-12)
    TOOLS=$RELEASE_CACHE/tools-$key
    if [[ ! -f $TOOLS/.complete ]]; then
        rlog "installing the release tools (requirements/tools.lock) into $TOOLS"
        rm -rf "$TOOLS"
        mkdir -p "$RELEASE_CACHE"
        python3 -m venv "$TOOLS"
        "$TOOLS/bin/pip" install -q --disable-pip-version-check --require-hashes --no-deps \
            -r "$REQS/tools.lock" >"$RELEASE_CACHE/tools-install.log" 2>&1 ||
            { cat "$RELEASE_CACHE/tools-install.log" >&2; rfail "pip install -r requirements/tools.lock"; }
        touch "$TOOLS/.complete"
        find "$RELEASE_CACHE" -maxdepth 1 -name 'tools-*' -type d ! -name "tools-$key" -exec rm -rf {} +
    fi
    export UV_CACHE_DIR=$RELEASE_CACHE/uv-cache UV_NO_CONFIG=1
}
