# otaflow services (worker | ingress | egress | api) for docker-compose.yml.
# Local development does not need Docker: `scripts/devstack up` starts Kafka
# and Mosquitto natively.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OTAFLOW_DATA=/var/lib/otaflow

WORKDIR /app

# Dependencies first, so editing the code does not re-download them.
COPY pyproject.toml README.md ./
COPY otaflow/__init__.py otaflow/__init__.py
RUN pip install .  && pip uninstall -y otaflow

# Editable install: the schemas/ folder stays next to the code it belongs to.
COPY otaflow ./otaflow
COPY streams ./streams
COPY connectors ./connectors
COPY benchmarks ./benchmarks
COPY schemas ./schemas
RUN pip install --no-deps -e . \
 && useradd --system --home-dir /var/lib/otaflow --create-home otaflow

USER otaflow
VOLUME ["/var/lib/otaflow"]
EXPOSE 8080 8081

ENTRYPOINT ["otaflow"]
CMD ["worker"]
