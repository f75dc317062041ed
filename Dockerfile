FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY bots ./bots
COPY handlers ./handlers
COPY state ./state
COPY templates ./templates
RUN pip install --no-cache-dir -e .
ENV KEFU_HOST=0.0.0.0 KEFU_PORT=8080 KEFU_DATA_DIR=/data
VOLUME /data
EXPOSE 8080
# Without KEFU_REDIS_URL this is the embedded single process (kefu demo);
# docker-compose.yml runs the web and worker roles on Redis instead.
CMD ["kefu", "demo", "--host", "0.0.0.0"]
