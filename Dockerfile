# followupd in a container: `docker build -t followupd .` then see compose.yaml.
# CI builds this file with podman and runs the image as declared here (.ci/image.sh): its user,
# volume, health check, entrypoint and command are checked against what the run finds.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FOLLOWUPD_HOME=/data

COPY pyproject.toml README.md /src/
COPY followupd /src/followupd
COPY templates /src/templates
COPY config /src/config

# The package and its PostgreSQL driver, without development tools; then a user that owns
# nothing but its data folder.
RUN pip install --no-cache-dir "/src[postgres]" \
    && rm -rf /src \
    && groupadd --system --gid 10001 followupd \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --shell /usr/sbin/nologin followupd \
    && mkdir -p /data \
    && chown followupd:followupd /data \
    && chmod 0700 /data

USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
# `followupd auth --bind 0.0.0.0` listens here for Google's redirect (publish it only then).
EXPOSE 8765

HEALTHCHECK --interval=60s --timeout=15s --start-period=60s --retries=3 \
    CMD ["followupd", "health"]

ENTRYPOINT ["followupd"]
CMD ["run"]
