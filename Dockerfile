# tracemirrord as a sidecar: it reads the agent's directories (mounted read-only below its HOME)
# and mirrors them to the bucket named by the environment. Usage: docs/running-docker.md.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed uid, so a host directory or a volume can be made readable/writable for it.
RUN groupadd --gid 10001 tracemirror \
 && useradd --uid 10001 --gid 10001 --home-dir /home/tracemirror --create-home \
            --shell /usr/sbin/nologin tracemirror

WORKDIR /tmp/tracemirror-src
COPY pyproject.toml README.md ./
COPY tracemirrord ./tracemirrord
RUN pip install --no-cache-dir . \
 && cd / && rm -rf /tmp/tracemirror-src

# /var/lib/tracemirror holds the checkpoint (state/) and, unless TRACEMIRROR_BUCKET names another
# bucket, the embedded one (bucket/): both outlive the container. Created here so that a new
# named volume starts with this ownership.
RUN mkdir -p /var/lib/tracemirror/state /var/lib/tracemirror/bucket \
 && chown -R 10001:10001 /var/lib/tracemirror \
 && chmod 0700 /var/lib/tracemirror /var/lib/tracemirror/state
VOLUME ["/var/lib/tracemirror"]

# Configuration is the environment only (no config file in the image); override any of these, and
# set TRACEMIRROR_BUCKET=s3://... plus AWS_* (or a role) at run time, never in the image.
ENV HOME=/home/tracemirror \
    TRACEMIRROR_STATE_DIR=/var/lib/tracemirror/state \
    TRACEMIRROR_SOCKET=/var/lib/tracemirror/state/ctl.sock \
    TRACEMIRROR_BUCKET=file:///var/lib/tracemirror/bucket \
    TRACEMIRROR_LOG_FORMAT=json

USER 10001:10001
WORKDIR /home/tracemirror

# tracemirrorctl status exits 0 healthy, 1 degraded (bucket unreachable, a harness failing, a
# session lagging), 2 no daemon answering: anything but 0 counts as unhealthy.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["tracemirrorctl", "status"]

# SIGTERM: flush what is held, write meta.json and the last heartbeat, exit 0 (allow 30 s:
# `docker stop --time 30`, or stop_grace_period in compose).
STOPSIGNAL SIGTERM
ENTRYPOINT ["tracemirrord"]
