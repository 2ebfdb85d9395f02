# One image for the coordinator and the node agent: `tessera coordinator serve` or
# `tessera node run --config /etc/tessera/node.toml`.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN useradd --create-home --uid 10001 tessera
WORKDIR /app
COPY pyproject.toml README.md ./
COPY api api
COPY node_agent node_agent
COPY smpc smpc
COPY synth synth
COPY tessera tessera
RUN pip install --no-cache-dir .
USER tessera
ENTRYPOINT ["tessera"]
CMD ["--help"]
