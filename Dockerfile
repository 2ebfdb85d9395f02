# One image for the coordinator and the node agent: `tessera coordinator serve` or
# `tessera node run --config /etc/tessera/node.toml`.
#
# The node agent trains synthetic-data generators: the image carries the `synth` extra, with a
# CPU build of torch by default. For a GPU node, build with a CUDA wheel index, e.g.
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
# A coordinator-only image needs none of it: --build-arg EXTRAS= (empty).
FROM python:3.11-slim
ARG EXTRAS=synth
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 MPLCONFIGDIR=/tmp/matplotlib
RUN useradd --create-home --uid 10001 tessera
WORKDIR /app
COPY pyproject.toml README.md ./
COPY api api
COPY cli cli
COPY demo demo
COPY node_agent node_agent
COPY smpc smpc
COPY synth synth
COPY tessera tessera
# torch first, from its own index, so that nothing pulls another build of it
RUN if [ -n "$EXTRAS" ]; then \
      pip install --no-cache-dir --index-url "$TORCH_INDEX" "$TORCH_SPEC"; \
    fi && \
    pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}"
USER tessera
ENTRYPOINT ["tessera"]
CMD ["--help"]
