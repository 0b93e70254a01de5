# CPU image holding every executor. Start one executor by its config, e.g.
#   docker build -t finetune-search .
#   docker run -p 54700:54700 -v $PWD/models:/app/workspace/models finetune-search \
#       executors/encoder/config.yml --port 54700
# Pass a CPU-only torch wheel index as build arg PIP_EXTRA_INDEX_URL for a smaller image.
FROM python:3.11-slim

ARG PIP_EXTRA_INDEX_URL=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    JINA_OPTOUT_TELEMETRY=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    PIP_NO_CACHE_DIR=1

RUN useradd --create-home --uid 10001 app
WORKDIR /app

COPY pyproject.toml constraints.txt README.md ./
COPY executors ./executors
COPY flows ./flows
RUN pip install 'pip==25.3' 'setuptools==80.9.0' \
    && pip install -c constraints.txt . \
    && mkdir -p /app/workspace \
    && chown -R app:app /app/workspace

USER 10001
EXPOSE 54700
ENTRYPOINT ["jina", "executor", "--uses"]
CMD ["executors/encoder/config.yml", "--port", "54700"]
