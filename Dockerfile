# One image for the worker and the dashboard services of docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY nas_distill ./nas_distill
# CPU wheel of torch from its CPU index keeps the image small; a GPU image only changes this line.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch>=2.2,<2.15" \
 && pip install --no-cache-dir ".[torch,postgres,dashboard]"
COPY examples ./examples
RUN useradd --create-home nas && mkdir -p /runs && chown nas /runs
USER nas
ENTRYPOINT ["nas-distill"]
