# metergate: one image for the proxy, the console, migrations and the simulator.
# Build: docker build -t metergate .   (docker compose builds it for every service)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    METERGATE_DATA_DIR=/data

WORKDIR /app
# Dependencies first, so a source change does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir -p proxy shared console && touch proxy/__init__.py shared/__init__.py \
    && pip install . && pip uninstall -y metergate && rm -rf proxy shared console
COPY proxy ./proxy
COPY shared ./shared
COPY console ./console
RUN pip install --no-deps . \
    && useradd --system --create-home --uid 10001 metergate \
    && mkdir -p /data && chown metergate /data

# The record spool lives in /data: mount a volume there so queued records outlive a restart.
VOLUME ["/data"]
USER metergate
EXPOSE 8080 8501 9000
CMD ["metergate", "serve", "proxy", "--host", "0.0.0.0", "--port", "8080"]
