# charlstm gRPC server. Build: docker build -t charlstm .
# Run:   docker run -p 50051:50051 -p 9090:9090 -v charlstm-store:/data charlstm

# Stage 1: build the package into a virtual environment (wheels only; nothing is compiled),
# with the s3 extra (boto3) so that replicas can share a store on object storage (deploy/).
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/charlstm
COPY pyproject.toml README.md LICENSE ./
COPY protos/ protos/
COPY engine/ engine/
COPY service/ service/
COPY client/ client/
RUN /opt/charlstm/bin/pip install --no-compile '.[s3]' \
    && find /opt/charlstm -name '__pycache__' -prune -exec rm -rf {} +

# Stage 2: the runtime image: the virtual environment, a non-root user and a volume for the store.
FROM python:3.11-slim
ENV PATH=/opt/charlstm/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CHARLSTM_HOST=0.0.0.0 \
    CHARLSTM_PORT=50051 \
    CHARLSTM_METRICS_PORT=9090 \
    CHARLSTM_STORE=/data \
    CHARLSTM_LOG_FORMAT=json
COPY --from=build /opt/charlstm /opt/charlstm
RUN groupadd --system --gid 10001 charlstm \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home charlstm \
    && mkdir -p /data && chown 10001:10001 /data
VOLUME ["/data"]
EXPOSE 50051 9090
USER 10001:10001
WORKDIR /data
# Asks the standard grpc.health.v1 service (no token needed for health).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["charlstm", "health", "--server", "127.0.0.1:50051", "--timeout", "3"]
# Exec form: the server is PID 1 and receives SIGTERM itself, draining gracefully.
STOPSIGNAL SIGTERM
ENTRYPOINT ["charlstm", "serve"]
