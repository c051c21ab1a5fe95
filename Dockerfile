# Tokenbridge: one image, two entrypoints.
#   docker run IMAGE                      -> tokenbridge serve --kubernetes --bind 0.0.0.0:8080  (the default CMD)
#   docker run IMAGE operator             -> tokenbridge operator
#   docker run IMAGE serve --manifests /m -> standalone server from mounted manifests
# Build: docker build -t tokenbridge:0.1.0 .   (see charts/tokenbridge/README.md for kind + helm)

# ---- build: install the project and its runtime dependencies (no dev extras) into a virtualenv ----------------
FROM python:3.11-slim AS build
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
FROM python:3.11-slim
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
