# The reconciler daemon as a container (needs a registry for the base image; on a machine without one,
# run the daemon on the host with deploy/reconciler.service instead).
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-client-15 git \
    && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN pip install --no-cache-dir /src
STOPSIGNAL SIGTERM
ENTRYPOINT ["reconciler"]
CMD ["daemon"]
