# Tokenbridge: one image, two entrypoints.
#   docker run IMAGE                      -> tokenbridge serve --kubernetes --bind 0.0.0.0:8080  (the default CMD)
#   docker run IMAGE operator             -> tokenbridge operator
#   docker run IMAGE serve --manifests /m -> standalone server from mounted manifests
# Build: docker build -t tokenbridge:0.1.0 .   (see charts/tokenbridge/README.md for kind + helm)
# Without Docker: `make image` builds the same image from Debian packages (image/build.sh; what the tests run).
# The base is pinned by digest (python:3.11-slim-bookworm, the Debian release image/build.sh builds on); to move it,
# `docker buildx imagetools inspect python:3.11-slim-bookworm` and replace the digest.
ARG BASE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

# ---- build: install the project and its runtime dependencies (no dev extras) into a virtualenv ----------------
FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/tokenbridge
WORKDIR /src
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY tokenbridge/ tokenbridge/
COPY tokenbridge_cli/ tokenbridge_cli/
COPY operator/ operator/
COPY exchange_server/ exchange_server/
# the versions the tests ran with (constraints.txt, `make lock`), not whatever is newest today
RUN /opt/tokenbridge/bin/pip install -c constraints.txt . \
 && /opt/tokenbridge/bin/python -c "import tokenbridge_cli.cli, tokenbridge_exchange.serve, tokenbridge_operator.main, gunicorn.workers.ggevent"

# ---- runtime: the virtualenv only, run as an unprivileged numeric user -------------------------------------------
FROM ${BASE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="tokenbridge" \
      org.opencontainers.image.description="Kubernetes-native OAuth 2.0 token exchange (RFC 8693 / RFC 7523)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/tokenbridge/tokenbridge" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/tokenbridge/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 tokenbridge \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin tokenbridge
COPY --from=build /opt/tokenbridge /opt/tokenbridge
# numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
ENTRYPOINT ["tokenbridge"]
CMD ["serve", "--kubernetes", "--bind", "0.0.0.0:8080"]
