# One image for every pipeline role: `orderstream worker | sink | verifiers`.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# librocksdb, confluent-kafka and chdb ship manylinux wheels: no compiler needed.
RUN useradd --system --create-home --uid 10001 orderstream \
 && mkdir -p /var/lib/orderstream \
 && chown orderstream /var/lib/orderstream

WORKDIR /app

# Dependencies first, so a code change does not re-download them.
COPY pyproject.toml constraints.txt README.md ./
COPY pipeline ./pipeline
COPY agents ./agents
COPY schemas ./schemas
RUN pip install -c constraints.txt .

# The codecs read schemas/*.avsc next to the pipeline package (PROJECT_ROOT), which the
# installed wheel does not carry: run the source tree in /app, the wheel only provides
# the dependencies and the `orderstream` console script.
ENV PYTHONPATH=/app \
    ORDERSTREAM_VAR_DIR=/var/lib/orderstream

# Fail the build, not the deployment, if the schemas cannot be found.
RUN python -c "from pipeline.codecs import order_codec; order_codec()"

USER orderstream
# worker web (/metrics, /health, /ready), sink web, local verifiers
EXPOSE 6066 6070 18089
CMD ["orderstream", "worker"]
