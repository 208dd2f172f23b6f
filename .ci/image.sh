#!/usr/bin/env bash
# The container image, built from the Dockerfile and run for real (CI's slow tier; root only).
#
# There is no Docker engine here, and this sandbox refuses to start a container (the OCI
# runtime's setrlimit is not permitted), so:
#  1. the base: a stand-in for the Dockerfile's FROM (python:3.11-slim) made with debootstrap
#     from Debian bookworm (python3 3.11, venv, pip, ca-certificates; `python` and `pip` on
#     PATH, no EXTERNALLY-MANAGED marker, as in the official image) and `podman import`ed under
#     that name. Its tarball and the imported image are cached in $FOLLOWUPD_CI_CACHE
#     (/var/cache/followupd-ci), keyed by the recipe and package list: a second run skips this.
#  2. the build: `podman build --pull=never --isolation=chroot` of our Dockerfile, unchanged,
#     with this machine's CA bundle and pip configuration mounted read-only for its RUN steps
#     (as behind any TLS-inspecting proxy); never copied into the image, which is checked.
#  3. the run: the image's own file system (`podman image mount`), read-only, a fresh volume on
#     its VOLUME, run as its USER with its Env alone, in its WORKDIR, each command in its own PID
#     namespace: `demo`, `check`, `init`, the HEALTHCHECK's command while `run` (the CMD) is
#     running as PID 1, then `run` stopped by SIGTERM (.ci/image.py does this part).
# Any difference between what the Dockerfile declares and what the build and the run found
# fails the step, naming it. The log shows the image's size and its Python packages.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "FAIL: .ci/image.sh needs root (debootstrap, podman's storage, mounts)" >&2
  exit 1
fi
started=$SECONDS
PY=${PYTHON:-python3} # .ci/image.py uses the standard library only
CACHE=${FOLLOWUPD_CI_CACHE:-/var/cache/followupd-ci}
MIRROR=${FOLLOWUPD_CI_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm # its python3 is 3.11, as in the FROM
BASE_PACKAGES=python3,python3-venv,python3-pip,ca-certificates
RECIPE=1 # bump when the base's making below changes
TAG=localhost/followupd:ci

# --- tools ---------------------------------------------------------------------------------
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (Debian's packages)"
  t=$SECONDS
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends podman debootstrap >/dev/null
  echo "  installed in $((SECONDS - t)) s"
fi
for tool in unshare nsenter flock mount; do
  command -v "$tool" >/dev/null || { echo "FAIL: $tool is missing (util-linux)"; exit 1; }
done
echo "podman $(podman --version | awk '{print $3}'), debootstrap $(dpkg-query -W -f '${Version}' debootstrap 2>/dev/null || echo '?')"

mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock -w 1800 9 # one CI run at a time uses the cache and its image storage

# podman's own storage in the cache, apart from the machine's; overlay where the kernel lets
# us, else vfs (slower, no kernel help needed).
driver=${FOLLOWUPD_CI_STORAGE_DRIVER:-overlay}
if ! podman --root "$CACHE/storage-$driver" --runroot "/run/followupd-ci-$driver" \
  --storage-driver "$driver" info >/dev/null 2>&1; then
  driver=vfs
fi
P=(podman --root "$CACHE/storage-$driver" --runroot "/run/followupd-ci-$driver" --storage-driver "$driver")

WORK=$(mktemp -d /tmp/followupd-image.XXXXXX)
chmod 0755 "$WORK"
cleanup() {
  "${P[@]}" image unmount "$TAG" >/dev/null 2>&1 || true
  [ -n "${BASE:-}" ] && { "${P[@]}" image unmount "$BASE" >/dev/null 2>&1 || true; }
  "${P[@]}" rmi -f "$TAG" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- 1. the base ---------------------------------------------------------------------------
FROM=$("$PY" .ci/image.py declared Dockerfile | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["from"])')
case "$FROM" in
  python:3.11-slim | python:3.11-slim-bookworm | docker.io/library/python:3.11-slim*) ;;
  *)
    echo "FAIL: the Dockerfile's FROM is $FROM; CI's stand-in base is Debian $SUITE's Python 3.11 (python:3.11-slim): change .ci/image.sh with it"
    exit 1
    ;;
esac
BASE=docker.io/library/${FROM#docker.io/library/}
key=$(printf '%s|' "$RECIPE" "$SUITE" minbase "$BASE_PACKAGES" "$MIRROR" "$(dpkg --print-architecture)" |
  sha256sum | cut -c1-16)
tarball="$CACHE/base-$key.tar"
t=$SECONDS
if [ "$("${P[@]}" image inspect --format '{{index .Labels "org.followupd.ci.base"}}' "$BASE" 2>/dev/null)" = "$key" ]; then
  how="cached image"
else
  if [ -s "$tarball" ]; then
    how="cached root file system, imported"
  else
    how="debootstrap"
    rootfs="$CACHE/rootfs-$key.tmp"
    rm -rf "$rootfs"
    echo "debootstrap $SUITE (minbase + $BASE_PACKAGES) from $MIRROR"
    if ! debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$rootfs" "$MIRROR" \
      >"$WORK/debootstrap.log" 2>&1; then
      tail -n 30 "$WORK/debootstrap.log"
      echo "FAIL: debootstrap of the base failed"
      exit 1
    fi
    # As the official image: `python` and `pip` on PATH, pip free to install system-wide;
    # as a -slim image: no apt lists, caches, manuals or translations.
    rm -f "$rootfs"/usr/lib/python3.*/EXTERNALLY-MANAGED
    ln -sf python3 "$rootfs/usr/bin/python"
    [ -e "$rootfs/usr/bin/pip" ] || ln -s pip3 "$rootfs/usr/bin/pip"
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/*.log \
      "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
    find "$rootfs/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
    tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
    find "$CACHE" -maxdepth 1 -name 'base-*.tar' ! -name "base-$key.tar" -delete
  fi
  "${P[@]}" rmi -f "$BASE" >/dev/null 2>&1 || true
  "${P[@]}" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --change "LABEL org.followupd.ci.base=$key" \
    "$tarball" "$BASE" >"$WORK/import.log" 2>&1 || {
    cat "$WORK/import.log"
    echo "FAIL: podman import of the base failed"
    exit 1
  }
fi
base_size=$("${P[@]}" image inspect --format '{{.Size}}' "$BASE")
echo "base $FROM: Debian $SUITE stand-in ($key), $how in $((SECONDS - t)) s"
base_took=$((SECONDS - t))

# --- 2. the build --------------------------------------------------------------------------
t=$SECONDS
volumes=()
while IFS= read -r line; do volumes+=(-v "$line"); done < <("$PY" .ci/image.py mounts)
shown=$(printf '%s\n' "${volumes[@]}" | grep -v '^-v$' | cut -d: -f1 | paste -sd' ')
echo "build: podman build --pull=never --isolation=chroot (read-only for the build: $shown)"
"${P[@]}" image unmount --all >/dev/null 2>&1 || true # a run that was killed may have left one
"${P[@]}" rmi -f "$TAG" >/dev/null 2>&1 || true
if ! "${P[@]}" build --format docker --pull=never --isolation=chroot --layers=false \
  "${volumes[@]}" -t "$TAG" -f Dockerfile . >"$WORK/build.log" 2>&1; then
  tail -n 25 "$WORK/build.log" | sed 's/^/  | /'
  echo "FAIL: the image does not build from the Dockerfile: $(grep -E '^(Error|error):' "$WORK/build.log" | tail -n 1)"
  exit 1
fi
grep -E '^STEP ' "$WORK/build.log" | cut -c1-110 | sed 's/^/  /'
build_took=$((SECONDS - t))
echo "  built in $build_took s"

# --- 3. what the image declares, what it holds, and what it does -----------------------------
"${P[@]}" image inspect "$TAG" >"$WORK/inspect.json"
status=0
"$PY" .ci/image.py config Dockerfile "$WORK/inspect.json" || status=1

size=$("${P[@]}" image inspect --format '{{.Size}}' "$TAG")
mb() { awk -v b="$1" 'BEGIN { printf "%.0f MB", b / 1000000 }'; }
echo "image size: $(mb "$size") ($size bytes): the base $(mb "$base_size"), followupd and its packages $(mb $((size - base_size)))"

image_dir=$("${P[@]}" image mount "$TAG")
base_dir=$("${P[@]}" image mount "$BASE")
"$PY" .ci/image.py leftovers "$image_dir" "$base_dir" || status=1

t=$SECONDS
unshare --mount --propagation private -- "$PY" .ci/image.py run "$WORK/inspect.json" "$image_dir" "$WORK" || status=1
run_took=$((SECONDS - t))
"$PY" .ci/image.py packages pyproject.toml "$WORK/pip-list.json" || status=1

took=$((SECONDS - started))
if [ "$status" != 0 ]; then
  echo "FAIL: the image differs from what the Dockerfile declares (the FAIL lines above), after $took s"
  exit 1
fi
echo "image: built from the Dockerfile and run as it declares, $(mb "$size"), in $took s (base $base_took s: $how; build $build_took s; run $run_took s)"
